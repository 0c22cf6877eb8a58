"""A node with several GPUs: one worker per GPU, packs spread over them, nothing lost.

The multi-GPU run itself needs a machine with several GPUs; this is the part a CPU can check.
A fake ``nvidia-smi`` reporting four devices makes ``local_htex`` detect a four-GPU node and
Parsl's worker pool pin its workers exactly as on a real one (``CUDA_VISIBLE_DEVICES`` per
worker). The trials run on the CPU; what is checked is where the driver sent them.
"""

from __future__ import annotations

import collections
import os

import pytest

from tests.workflow.conftest import count_events, events, run_cli, tiny_sweep, write_spec
from tests.workflow.test_site_configs import fake_tool

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

N_GPUS = 4


def test_a_four_gpu_node_gets_one_worker_per_gpu_and_every_pack_once(tmp_path, monkeypatch):
    fake_tool(tmp_path / "bin", "nvidia-smi",
              f'for i in $(seq 0 {N_GPUS - 1}); do echo "GPU $i: Fake (UUID: GPU-$i)"; done\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sweep = tiny_sweep({"noise[0].fraction": [0.0, 0.1, 0.2, 0.3]}, name="spread",
                       run={"site": "local_htex", "pack_size": 2,
                            "options": {"gpus": "auto", "encrypted": False}})
    spec = write_spec(tmp_path / "spread.json", sweep)
    out = tmp_path / "run"
    done = run_cli("run", str(spec), "--out", str(out), "--no-gather", timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{N_GPUS} trial slots" in done.stderr, done.stderr[-2000:]

    starts = [e for e in events(out) if e.get("event") == "start"]
    # every trial ran exactly once and finished
    assert len(starts) == 8 and len({e["trial_id"] for e in starts}) == 8
    assert set(count_events(out, "end", "done").values()) == {1}
    gpus_of_worker = collections.defaultdict(set)
    workers_of_gpu = collections.defaultdict(set)
    for e in starts:
        assert e["gpu"] in {str(i) for i in range(N_GPUS)}, e
        gpus_of_worker[e["pid"]].add(e["gpu"])
        workers_of_gpu[e["gpu"]].add(e["pid"])
    # a worker keeps its GPU and no two workers share one
    assert all(len(g) == 1 for g in gpus_of_worker.values()), gpus_of_worker
    assert all(len(w) == 1 for w in workers_of_gpu.values()), workers_of_gpu
    # the four packs of two went to more than one GPU
    assert len(workers_of_gpu) >= 2, workers_of_gpu
