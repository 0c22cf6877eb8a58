"""genodl from Python: plan, run and load noise-injection sweeps in a notebook or a script.

The command line (``genodl plan|run|status|report``) and this facade share one driver, so a
sweep run here resumes from the command line and the other way round. Importing ``genodl`` is
cheap: torch, Parsl, pandas and h5py are imported only by the functions that need them, so a
notebook kernel can import it before it decides what to do.

Examples
--------
>>> import genodl
>>> p = genodl.plan("jobs/examples/quick.toml")          # doctest: +SKIP
>>> p.n_trials, p.table.head()                            # doctest: +SKIP
>>> report = genodl.run("jobs/examples/quick.toml", "runs/quick",
...                     progress=lambda done, total, tid, state: print(done, total, tid, state))
...                                                       # doctest: +SKIP
>>> res = genodl.load("runs/quick")                       # doctest: +SKIP
>>> res.groups()[["variant", "noise_level", "val_accuracy.mean"]]  # doctest: +SKIP

See docs/python-api.md.
"""

from genodl.api import Plan, Results, load, plan, run, status, trial

__all__ = ["plan", "run", "trial", "load", "status", "Plan", "Results"]
