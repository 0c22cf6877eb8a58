"""Batch scripts cannot be made to run commands or add directives through the values they hold.

Each vector is tried through ``genodl submit --dry-run`` as a user would type it: a value that
would change the script is refused (exit 2, the option named, no script written); a value that
is accepted is quoted, and the script it gives is run under bash with a stub ``genodl`` (and
stub ``srun``/``jsrun``) on PATH: the canary file must never appear.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from genodl_core.errors import SpecError
from site_configs import load_site
from site_configs.script_values import (launcher_arguments, sbatch_option_list, scheduler_name,
                                        script_path)
from tests.workflow.conftest import tiny_lr_sweep_toml
from workflows.cli import main as genodl

pytestmark = pytest.mark.timeout(120)

CANARY = "PWNED"
INJECT = f"x\ntouch {CANARY}"


def write_sweep(tmp_path: Path, run_table: str = "", name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    # CPU trials: the generic slurm site refuses GPU trials without a GPU count.
    path.write_text(tiny_lr_sweep_toml("tiny", 2).replace("[trial]\n", '[trial]\ndevice = "cpu"\n')
                    + run_table)
    return path


def submit(tmp_path: Path, spec: Path, *args: str, out: str | None = None) -> int:
    return genodl(["submit", str(spec), "--out", out or str(tmp_path / "run"), "--env", "true",
                   "--dry-run", *args])


def written_scripts(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("submit.*") if p.suffix in (".sbatch", ".lsf")]


# --- refused: the value would change the script -------------------------------------------------

REFUSED = [
    # (site, arguments, the option the error must name)
    ("slurm", ["-o", f"account={INJECT}"], "slurm.account"),
    ("slurm", ["-o", "account=x\rtouch PWNED"], "slurm.account"),
    ("slurm", ["-o", "account=x\x00y"], "slurm.account"),
    ("slurm", ["-o", "partition=gpu --qos=urgent --account=someoneelse"], "slurm.partition"),
    ("slurm", ["-o", "qos=normal #"], "slurm.qos"),
    ("slurm", ["-o", f"constraint=gpu\ntouch {CANARY}"], "slurm.constraint"),
    ("slurm", ["--job-name", INJECT], "--job-name"),
    ("slurm", ["--job-name", "j --account=someoneelse"], "--job-name"),
    ("slurm", ["-o", f"sbatch_options=--mem=0\ntouch {CANARY}"], "slurm.sbatch_options"),
    ("slurm", ["-o", "sbatch_options=--mem=0 --account=someoneelse"], "slurm.sbatch_options[0]"),
    ("slurm", ["-o", "sbatch_options=--mem=0;--account=someoneelse"], "slurm.sbatch_options[1]"),
    ("slurm", ["-o", "sbatch_options=#SBATCH --mem=0"], "slurm.sbatch_options[0]"),
    ("slurm", ["-o", "sbatch_options=--comment='a b'"], "slurm.sbatch_options[0]"),
    ("slurm", ["-o", f"srun_overrides=--mem=0; touch {CANARY}"], "slurm.srun_overrides"),
    ("slurm", ["-o", f"srun_overrides=$(touch {CANARY})"], "slurm.srun_overrides"),
    ("slurm", ["-o", f"address=10.0.0.1;touch {CANARY}"], "slurm.address"),
    ("slurm", ["-o", f"worker_init=module load x\ntouch {CANARY}"], "slurm.worker_init"),
    ("perlmutter", ["-o", f"account={INJECT}"], "perlmutter.account"),
    ("frontier", ["-o", "account=a b"], "frontier.account"),
    ("summit", ["-o", f"project={INJECT}"], "summit.project"),
    ("summit", ["-o", "project=P", "-o", "queue=batch -P other"], "summit.queue"),
    ("summit", ["-o", "project=P", "-o", f"jsrun_overrides=-b packed:7 && touch {CANARY}"],
     "summit.jsrun_overrides"),
    ("summit", ["-o", "project=P", "--job-name", INJECT], "--job-name"),
]


@pytest.mark.parametrize("site,args,field", REFUSED,
                         ids=[f"{s}-{f}-{i}" for i, (s, _, f) in enumerate(REFUSED)])
def test_values_that_would_change_the_script_are_refused(tmp_path, capsys, site, args, field):
    spec = write_sweep(tmp_path)
    extra = ["-o", "project=P"] if site == "summit" and "project" not in " ".join(args) else []
    assert submit(tmp_path, spec, "--site", site, *extra, *args) == 2
    err = capsys.readouterr().err
    assert f"error: {field}=" in err, err          # names the option
    assert "allowed:" in err                        # and the allowed form
    assert "\n" not in err.rstrip("\n")             # one line: the bad value shown by its repr
    assert not written_scripts(tmp_path)
    assert not list(tmp_path.rglob(CANARY))


@pytest.mark.parametrize("out", [f"run\ntouch {CANARY}", "run dir", "run%j", "run#1",
                                 f"run$(touch {CANARY})", "run;touch PWNED"])
def test_run_directories_that_directives_or_launchers_would_split_are_refused(tmp_path, capsys,
                                                                               out):
    spec = write_sweep(tmp_path)
    assert submit(tmp_path, spec, "--site", "slurm", out=str(tmp_path / out)) == 2
    err = capsys.readouterr().err
    assert "error: --out=" in err and "allowed:" in err
    assert not written_scripts(tmp_path) and not (tmp_path / out).exists()


def test_a_sweep_files_run_options_are_checked_too(tmp_path, capsys):
    """The [run] options of a (possibly shared) sweep file go through the same checks."""
    spec = write_sweep(tmp_path, '\n[run]\nsite = "slurm"\n'
                                 '[run.options]\naccount = "x\\ntouch PWNED"\n')
    assert submit(tmp_path, spec, "--site", "slurm") == 2
    assert "error: slurm.account='x\\ntouch PWNED'" in capsys.readouterr().err
    assert not written_scripts(tmp_path)
    spec = write_sweep(tmp_path, '\n[run]\nsite = "slurm"\n'
                                 '[run.options]\nsbatch_options = ["--mem=0", "--x=1 --y=2"]\n')
    assert submit(tmp_path, spec, "--site", "slurm") == 2
    assert "error: slurm.sbatch_options[1]='--x=1 --y=2'" in capsys.readouterr().err


def test_sbatch_options_from_a_list_or_a_string_give_one_line_each(tmp_path):
    spec = write_sweep(tmp_path, '\n[run]\nsite = "slurm"\n[run.options]\n'
                                 'sbatch_options = ["--mem=0", "--mail-type=END,FAIL"]\n')
    assert submit(tmp_path, spec, "--site", "slurm") == 0
    lines = (tmp_path / "run" / "submit.sbatch").read_text().splitlines()
    assert "#SBATCH --mem=0" in lines and "#SBATCH --mail-type=END,FAIL" in lines
    assert sbatch_option_list(" --mem=0 ; --exclusive-user ;", "x") == ("--mem=0",
                                                                        "--exclusive-user")


def test_the_pilot_configs_refuse_the_same_values(tmp_path):
    """Parsl's pilot jobs write the same options into their own #SBATCH/#BSUB lines."""
    with pytest.raises(SpecError) as info:
        load_site("slurm", tmp_path, options={"account": INJECT, "address": "127.0.0.1"})
    assert info.value.field == "slurm.account"
    with pytest.raises(SpecError) as info:
        load_site("summit", tmp_path, options={"project": "a b", "address": "127.0.0.1"})
    assert info.value.field == "summit.project"
    with pytest.raises(SpecError) as info:
        load_site("slurm", tmp_path / "a;b", options={"account": "a", "address": "127.0.0.1"})
    assert info.value.field == "--out"


def test_allowed_forms_cover_real_names():
    for name in ("abc123", "m1234_g", "BIF-123.x"):
        assert scheduler_name(name, "account") == name
    assert launcher_arguments("  --gpu-bind=closest   -b packed:7 ", "x") == (
        "--gpu-bind=closest -b packed:7")
    assert script_path("/gpfs/alpine/proj-shared/abc123/runs/nt3_v1.2", "--out")
    for bad in ("", "a b", "a\nb", "a\x00b", "a'b", 'a"b', "a\\b", "a$b", "a`b`"):
        with pytest.raises(SpecError) as info:
            scheduler_name(bad, "account")
        assert repr(bad) in str(info.value) and "letters, digits" in str(info.value)


# --- accepted, quoted: the script runs without executing anything it holds ----------------------

def stub(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def run_script(tmp_path: Path, script: Path) -> list[str]:
    """Run ``script`` under bash with stubs on PATH; return the arguments the stub genodl got."""
    bin_dir = tmp_path / "stub-bin"
    argv_file = tmp_path / "genodl.argv"
    stub(bin_dir, "genodl", f'for a in "$@"; do printf "%s\\0" "$a"; done > "{argv_file}"\n')
    for launcher in ("srun", "jsrun", "sbatch", "bsub"):
        stub(bin_dir, launcher, f'echo {launcher} "$@" >> "{tmp_path}/launchers.log"\n')
    workdir = tmp_path / "submitted-from"
    workdir.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "SLURM_SUBMIT_DIR": str(workdir), "LS_SUBCWD": str(workdir)}
    done = subprocess.run(["bash", str(script)], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob(CANARY)), "the script ran an injected command"
    assert not os.path.exists(os.path.join(os.getcwd(), CANARY))
    return argv_file.read_text().split("\0")[:-1]


@pytest.mark.parametrize("site,args", [
    ("slurm", ["-o", "account=abc123", "-o", "partition=gpu,gpu-debug",
               "-o", "constraint=gpu&hbm80g", "-o", "sbatch_options=--mem=0;--comment=a,b"]),
    ("summit", ["-o", "project=ABC123", "-o", "queue=debug"]),
])
def test_accepted_values_are_quoted_and_never_run(tmp_path, site, args):
    # A sweep path full of shell syntax, and shell code in worker_init: both are arguments
    # of the `genodl run` line, so the script itself must pass them on verbatim.
    spec = write_sweep(tmp_path, name=f"s$(touch {CANARY});touch {CANARY};'`touch {CANARY}`.toml")
    worker_init = f"module load x; touch {CANARY} $(touch {CANARY}) `touch {CANARY}`"
    assert submit(tmp_path, spec, "--site", site, *args, "-o", f"worker_init={worker_init}",
                  "--job-name", "genodl-nt3.v1_a") == 0
    (script,) = written_scripts(tmp_path)
    argv = run_script(tmp_path, script)
    assert argv[:2] == ["run", str(spec)]
    assert f"worker_init={worker_init}" in argv
    assert argv[argv.index("--out") + 1] == str(tmp_path / "run")


def test_local_htex_refuses_a_run_directory_that_would_reach_the_worker_command(tmp_path):
    from site_configs.local_htex import htex_executor

    with pytest.raises(SpecError, match="--out"):
        htex_executor("x", None, tmp_path / "a b;touch PWNED", accelerators=[], cpu_workers=1,
                      address=None, encrypted=False)
