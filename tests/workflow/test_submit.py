"""Batch scripts of ``genodl submit``: their text for Slurm and LSF, the checked-in examples,
job-id parsing and submission through (fake) scheduler commands."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from genodl_core.errors import InfrastructureError, SpecError
from tests.workflow.conftest import REPO, tiny_lr_sweep_toml
from workflows import submit as sub
from workflows.cli import main as genodl

pytestmark = pytest.mark.timeout(120)

# CPU trials: the generic slurm site refuses GPU trials without a GPU count (test_gpu_requests).
TINY_SWEEP = tiny_lr_sweep_toml("tiny", 2).replace("[trial]\n", '[trial]\ndevice = "cpu"\n')


def write_sweep(tmp_path: Path, text: str = TINY_SWEEP) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def header(text: str, prefix: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(prefix)]


def run_line(text: str) -> list[str]:
    lines = [ln.removeprefix("exec ") for ln in text.splitlines()
             if ln.removeprefix("exec ").startswith("genodl run ")]
    assert len(lines) == 1, text
    return shlex.split(lines[0])


def request(site: str, **options) -> sub.BatchRequest:
    return sub.BatchRequest(spec="sweeps/s.toml", out_dir="runs/s", site=site, options=options,
                            env="source venv/bin/activate", job_name="genodl-s")


# --- Slurm -------------------------------------------------------------------------------------

def test_slurm_script_header_and_inside_run():
    text = sub.render_batch_script(request(
        "slurm", account="bio", partition="gpu", qos="high", nodes="3", walltime="1:30",
        gpus_per_node="4", cores_per_node="32", sbatch_options="--mem=0", interface="ib0"))
    assert text.startswith("#!/bin/bash\n")
    assert header(text, "#SBATCH") == [
        "#SBATCH --job-name=genodl-s", "#SBATCH --nodes=3", "#SBATCH --time=01:30:00",
        "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --account=bio",
        "#SBATCH --qos=high", "#SBATCH --cpus-per-task=32", "#SBATCH --gpus-per-node=4",
        "#SBATCH --exclusive", "#SBATCH --mem=0",
        "#SBATCH --output=runs/s/logs/batch-%j.out", "#SBATCH --error=runs/s/logs/batch-%j.err",
        "#SBATCH --signal=B:TERM@180"]
    # the walltime warning signal reaches `genodl run`: it is the batch shell (exec)
    assert text.splitlines()[-1].startswith("exec genodl run ")
    # directives must come before the first command, or sbatch ignores them
    first_command = next(i for i, ln in enumerate(text.splitlines()[1:], 1)
                         if ln and not ln.startswith("#"))
    assert all(i < first_command for i, ln in enumerate(text.splitlines())
               if ln.startswith("#SBATCH"))
    assert "source venv/bin/activate" in text.splitlines()
    argv = run_line(text)
    assert argv[:9] == ["genodl", "run", "sweeps/s.toml", "--site", "slurm", "--out", "runs/s",
                        "-o", "mode=inside"]
    opts = {argv[i + 1] for i in range(9, len(argv), 2) if argv[i] == "-o"}
    # what the workers need is repeated; what only shaped the request is not
    assert {"nodes=3", "gpus_per_node=4", "cores_per_node=32", "interface=ib0"} <= opts
    assert not any(o.startswith(("account=", "partition=", "walltime=", "qos=")) for o in opts)


def test_slurm_script_defaults_are_minimal():
    text = sub.render_batch_script(request("slurm"))
    assert "#SBATCH --time=00:30:00" in text and "#SBATCH --nodes=1" in text
    assert "--partition" not in text and "--account" not in text and "--gpus" not in text
    assert "-o nodes=1" in text


def test_script_is_valid_bash(tmp_path):
    for site, opts in (("slurm", {}), ("summit", {"project": "P1"}),
                       ("perlmutter", {"account": "m1_g"}), ("frontier", {"account": "A1"})):
        path = tmp_path / f"{site}.sh"
        path.write_text(sub.render_batch_script(request(site, **opts)))
        done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


# --- LSF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("walltime,w", [("02:00:00", "2:00"), ("0:30:30", "0:31"), ("45", "0:45"),
                                        ("30:00:00", "30:00")])
def test_lsf_walltime(walltime, w):
    assert sub.lsf_walltime(walltime) == w


def test_summit_bsub_script():
    text = sub.render_batch_script(request(
        "summit", project="BIO123", nodes=4, walltime="1:00", queue="debug",
        worker_init="module load open-ce", trials_per_gpu=2))
    assert header(text, "#BSUB") == [
        "#BSUB -P BIO123", "#BSUB -W 1:00", "#BSUB -nnodes 4", "#BSUB -q debug",
        "#BSUB -J genodl-s", "#BSUB -o runs/s/logs/batch.%J.out",
        "#BSUB -e runs/s/logs/batch.%J.err", "#BSUB -wa TERM", "#BSUB -wt 3",
        '#BSUB -alloc_flags "gpumps"']  # two trials share each GPU: MPS
    assert 'cd "${LS_SUBCWD:-.}"' in text
    assert text.splitlines()[-1].startswith("exec genodl run ")
    argv = run_line(text)
    assert argv[3:5] == ["--site", "summit"] and "mode=inside" in argv
    assert "worker_init=module load open-ce" in argv  # quoted as one argument
    assert "trials_per_gpu=2" in argv and "nodes=4" in argv
    assert not any(a.startswith(("project=", "queue=", "walltime=")) for a in argv)


def test_summit_inside_jsrun_line_matches_the_submitted_job(tmp_path):
    """The options the script passes on build a config whose jsrun covers the whole allocation."""
    from site_configs import load_site

    text = sub.render_batch_script(request("summit", project="P", nodes=3, address="10.1.1.1"))
    argv = run_line(text)
    options = dict(argv[i + 1].split("=", 1) for i in range(len(argv)) if argv[i] == "-o")
    cfg = load_site("summit", tmp_path, options=options)
    provider = cfg.executors[0].provider
    jsrun = [ln for ln in provider.launcher("CMD", 1, provider.nodes_per_block).splitlines()
             if ln.startswith("jsrun")][0]
    assert jsrun.startswith("jsrun -n 3 -r 1 -a1 -c42 -g6 --bind=none")


# --- errors ------------------------------------------------------------------------------------

def test_local_sites_cannot_be_submitted():
    with pytest.raises(SpecError) as info:
        sub.render_batch_script(request("local_threads"))
    assert info.value.field == "--site" and "slurm" in info.value.allowed
    assert "summit" in info.value.allowed


def test_required_options_and_mode():
    with pytest.raises(SpecError) as info:
        sub.render_batch_script(request("summit"))
    assert info.value.field == "summit.project"
    with pytest.raises(SpecError) as info:
        sub.render_batch_script(request("frontier"))
    assert info.value.field == "frontier.account"
    with pytest.raises(SpecError) as info:
        sub.render_batch_script(request("slurm", mode="pilot"))
    assert info.value.field == "slurm.mode"
    with pytest.raises(SpecError) as info:
        sub.render_batch_script(request("slurm", nodez="2"))
    assert info.value.field == "slurm.nodez" and "nodes" in info.value.allowed


# --- checked-in examples -----------------------------------------------------------------------

def test_checked_in_examples_match_the_generator():
    rendered = sub.render_examples()
    assert set(rendered) == {"jobs/summit.lsf", "jobs/slurm.sbatch"}
    for rel, text in rendered.items():
        path = REPO / rel
        assert path.read_text() == text, (
            f"{rel} is stale: regenerate with `python -m workflows.submit --write-examples`")
        assert str(REPO) not in text          # portable: no absolute path of this checkout
    # the sweep the examples run must be a valid sweep once it is checked in
    from workflows.sweep import load_sweep

    for req in sub.EXAMPLES.values():
        if (REPO / req.spec).exists():
            assert load_sweep(REPO / req.spec).trials


# --- job ids and submission --------------------------------------------------------------------

def test_parse_job_id():
    assert sub.parse_job_id("slurm", "12345\n") == "12345"
    assert sub.parse_job_id("slurm", "678;cluster2\n") == "678"
    assert sub.parse_job_id("lsf", "Job <99> is submitted to queue <batch>.\n") == "99"
    with pytest.raises(InfrastructureError):
        sub.parse_job_id("lsf", "Request aborted by esub.\n")
    with pytest.raises(InfrastructureError):
        sub.parse_job_id("slurm", "sbatch: error: invalid partition\n")


def test_submit_script_uses_sbatch_parsable_and_bsub_stdin(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "sbatch", f'echo "$@" > "{tmp_path}/sbatch.args"\necho "4711"\n')
    fake_tool(bin_dir, "bsub", f'echo "$@" > "{tmp_path}/bsub.args"\n'
                               f'cat > "{tmp_path}/bsub.stdin"\n'
                               'echo "Job <815> is submitted to queue <batch>."\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#BSUB -P X\necho hi\n")
    assert sub.submit_script(script, "slurm") == "4711"
    assert (tmp_path / "sbatch.args").read_text().split() == ["--parsable", str(script)]
    assert sub.submit_script(script, "lsf") == "815"
    assert (tmp_path / "bsub.args").read_text().strip() == ""
    assert (tmp_path / "bsub.stdin").read_text() == script.read_text()


def test_submit_failures_are_reported(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "sbatch", 'echo "sbatch: error: Invalid account" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(InfrastructureError, match="Invalid account"):
        sub.submit_script(tmp_path / "x.sh", "slurm")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InfrastructureError, match="bsub not found"):
        sub.submit_script(tmp_path / "x.sh", "lsf")


# --- the command -------------------------------------------------------------------------------

def test_cli_dry_run_writes_script_without_submitting(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "sbatch", f'touch "{tmp_path}/submitted"\necho 1\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = write_sweep(tmp_path)
    out = tmp_path / "run"
    code = genodl(["submit", str(spec), "--site", "slurm", "--nodes", "2", "--walltime", "0:20",
                   "-o", "partition=debug", "--out", str(out), "--env", "echo env-ready",
                   "--dry-run"])
    assert code == 0
    assert not (tmp_path / "submitted").exists()
    script = out / "submit.sbatch"
    text = script.read_text()
    assert capsys.readouterr().out == text
    assert (out / "logs").is_dir()  # Slurm opens the log files before the script runs
    assert "#SBATCH --nodes=2" in text and "#SBATCH --time=00:20:00" in text
    assert "#SBATCH --partition=debug" in text and "#SBATCH --job-name=genodl-tiny" in text
    argv = run_line(text)
    assert argv[2] == str(spec.resolve()) and argv[argv.index("--out") + 1] == str(out.resolve())
    assert "echo env-ready" in text.splitlines()


def test_cli_submits_and_prints_job_id(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "bsub", f'cat > "{tmp_path}/bsub.stdin"\n'
                               'echo "Job <31337> is submitted to queue <batch>."\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    spec = write_sweep(tmp_path)
    code = genodl(["submit", str(spec), "--site", "summit", "-o", "project=BIO1",
                   "--out", str(tmp_path / "run")])
    assert code == 0
    assert capsys.readouterr().out.strip() == "31337"
    assert (tmp_path / "bsub.stdin").read_text() == (tmp_path / "run" / "submit.lsf").read_text()


def test_cli_default_env_activates_this_venv(tmp_path, capsys):
    spec = write_sweep(tmp_path)
    assert genodl(["submit", str(spec), "--site", "slurm", "--out", str(tmp_path / "r"),
                   "--dry-run"]) == 0
    text = (tmp_path / "r" / "submit.sbatch").read_text()
    if sys.prefix != sys.base_prefix:
        assert f"source {Path(sys.prefix) / 'bin' / 'activate'}" in text


def test_cli_invalid_sweep_fails_before_writing(tmp_path, capsys):
    spec = write_sweep(tmp_path, TINY_SWEEP.replace('name = "lr"', 'name = "lrr"'))
    code = genodl(["submit", str(spec), "--site", "slurm", "--out", str(tmp_path / "run"),
                   "--dry-run"])
    assert code == 2
    assert "lrr" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_invalid_site_option_fails_before_writing(tmp_path, capsys):
    spec = write_sweep(tmp_path)
    code = genodl(["submit", str(spec), "--site", "summit", "--out", str(tmp_path / "run"),
                   "--dry-run"])
    assert code == 2
    assert "summit.project" in capsys.readouterr().err
    assert not (tmp_path / "run" / "submit.lsf").exists()


def test_cli_forwards_run_options_to_the_driver_in_the_job(tmp_path, capsys):
    spec = write_sweep(tmp_path)
    out = tmp_path / "run"
    assert genodl(["submit", str(spec), "--site", "slurm", "--out", str(out), "--dry-run",
                   "--retries", "3", "--pack-size", "4", "--threads-per-trial", "2",
                   "--progress-interval", "10", "--no-gather", "--update-sweep"]) == 0
    argv = run_line((out / "submit.sbatch").read_text())
    after = argv[argv.index("mode=inside") + 1:]
    for flag, value in (("--retries", "3"), ("--pack-size", "4"), ("--threads-per-trial", "2"),
                        ("--progress-interval", "10.0")):
        assert after[after.index(flag) + 1] == value, flag
    assert "--no-gather" in after and "--update-sweep" in after
    assert genodl(["submit", str(spec), "--site", "slurm", "--out", str(tmp_path / "bad"),
                   "--dry-run", "--retries", "-1"]) == 2
    assert "--retries" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "submit.sbatch").exists()


def test_cli_refuses_a_directory_holding_another_sweep_before_writing(tmp_path, capsys):
    from workflows.rundir import RunDir
    from workflows.sweep import load_sweep

    out = tmp_path / "run"
    RunDir.prepare(out, load_sweep(write_sweep(tmp_path)))
    before = (out / "sweep.json").read_bytes()
    spec = write_sweep(tmp_path, TINY_SWEEP.replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    code = genodl(["submit", str(spec), "--site", "slurm", "--out", str(out), "--dry-run"])
    assert code == 2
    assert "1 trials would be added, 0 dropped" in capsys.readouterr().err
    assert not (out / "submit.sbatch").exists()
    # With --update-sweep the job's driver may replace it; submit itself still writes nothing
    # into sweep.json (the driver does, under its lock).
    code = genodl(["submit", str(spec), "--site", "slurm", "--out", str(out), "--dry-run",
                   "--update-sweep"])
    assert code == 0 and "--update-sweep" in run_line((out / "submit.sbatch").read_text())
    assert (out / "sweep.json").read_bytes() == before
    # The same sweep again (or a fresh directory) needs nothing.
    same = write_sweep(tmp_path)
    assert genodl(["submit", str(same), "--site", "slurm", "--out", str(out), "--dry-run"]) == 0


def test_cli_sites_lists_sites(capsys):
    assert genodl(["sites"]) == 0
    out = capsys.readouterr().out
    for name in ("local_threads", "local_htex", "slurm", "summit", "frontier", "perlmutter"):
        assert name in out
    assert genodl(["sites", "summit"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("summit") and "local_threads" not in out and "project" in out
    assert genodl(["sites", "nosuch"]) == 2


def test_cli_sites_shows_the_mpi_pseudo_site(capsys):
    assert genodl(["sites", "mpi"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mpi [mpiexec]") and "gpus_per_node" in out and "slurm" not in out
    assert genodl(["sites", "mpi", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "mpi" and [o["name"] for o in row["options"]] == ["gpus_per_node"]
    assert genodl(["sites", "--json"]) == 0
    assert "mpi" in {r["name"] for r in json.loads(capsys.readouterr().out)}
