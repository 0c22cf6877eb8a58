"""GPU requests of ``genodl submit``: a sweep training on GPUs never silently gets CPU workers,
``genodl sites`` says how each site gets its GPU count, and Summit-like scripts carry the LSF
flags and modules a GPU job needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genodl_core.errors import SpecError
from tests.workflow.conftest import tiny_lr_sweep_toml
from workflows import submit as sub
from workflows.cli import main as genodl

pytestmark = pytest.mark.timeout(60)


def write_sweep(tmp_path: Path, device: str | None) -> Path:
    text = tiny_lr_sweep_toml("gpu", 1)
    if device is not None:
        text = text.replace("[trial]\n", f'[trial]\ndevice = "{device}"\n')
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def submit(tmp_path: Path, spec: Path, site: str, *options: str) -> int:
    args = ["submit", str(spec), "--site", site, "--out", str(tmp_path / "run"), "--dry-run"]
    for option in options:
        args += ["-o", option]
    return genodl(args)


@pytest.mark.parametrize("device", [None, "auto", "cuda"])
def test_gpu_sweep_on_plain_slurm_without_gpu_count_is_refused(tmp_path, capsys, device):
    code = submit(tmp_path, write_sweep(tmp_path, device), "slurm", "partition=gpu")
    err = capsys.readouterr().err
    assert code == 2
    assert "slurm.gpus_per_node" in err and "-o gpus_per_node=N" in err
    assert "-o gpus_per_node=0" in err and '"cpu"' in err
    assert not (tmp_path / "run" / "submit.sbatch").exists()


def test_gpu_count_given_requests_gpus(tmp_path):
    assert submit(tmp_path, write_sweep(tmp_path, "auto"), "slurm", "gpus_per_node=4") == 0
    assert "#SBATCH --gpus-per-node=4" in (tmp_path / "run" / "submit.sbatch").read_text()


def test_cpu_workers_are_asked_for_explicitly(tmp_path):
    assert submit(tmp_path, write_sweep(tmp_path, "cpu"), "slurm") == 0
    assert submit(tmp_path, write_sweep(tmp_path, "cpu"), "slurm", "gpus_per_node=0") == 0
    text = (tmp_path / "run" / "submit.sbatch").read_text()
    assert "--gpus-per-node" not in text


def test_cuda_trials_on_cpu_workers_are_refused():
    with pytest.raises(SpecError) as info:
        sub.check_gpu_request("slurm", {"gpus_per_node": "0"}, ["cuda"])
    assert info.value.field == "slurm.gpus_per_node" and "cuda" in info.value.reason


@pytest.mark.parametrize("site, options", [("summit", {}), ("frontier", {}),
                                           ("perlmutter", {})])
def test_sites_with_a_known_gpu_count_pass(site, options):
    sub.check_gpu_request(site, options, ["auto", "cuda"])


def test_the_gpu_count_comes_from_the_sweeps_run_options(tmp_path):
    spec = write_sweep(tmp_path, "auto")
    spec.write_text(spec.read_text() + '\n[run]\nsite = "slurm"\n[run.options]\ngpus_per_node = 2\n')
    assert submit(tmp_path, spec, "slurm") == 0


def test_sites_lists_how_each_site_gets_its_gpus(capsys):
    assert genodl(["sites"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    gpu_line = {lines[i].split(" ", 1)[0]: lines[i + 1] for i in range(len(lines) - 1)
                if lines[i + 1].startswith("    GPUs:")}
    assert "fixed: 6 per node" in gpu_line["summit"]
    assert "preset: 8 per node" in gpu_line["frontier"]
    assert "preset: 4 per node" in gpu_line["perlmutter"]
    assert "-o gpus_per_node=N" in gpu_line["slurm"]
    assert genodl(["sites", "slurm"]) == 0
    assert "GPUs:" in capsys.readouterr().out
    assert genodl(["sites", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["summit"]["gpus"] == "fixed: 6 per node"


def test_summit_script_has_alloc_flags_and_modules():
    request = sub.BatchRequest(spec="s.toml", out_dir="runs/s", site="summit",
                               options={"project": "P1", "trials_per_gpu": 2,
                                        "alloc_flags": "smt4", "modules": "open-ce;cuda/11.0"})
    text = sub.render_batch_script(request)
    assert '#BSUB -alloc_flags "gpumps smt4"' in text
    assert "module load open-ce cuda/11.0" in text
    run_line = text.splitlines()[-1]
    assert "alloc_flags" not in run_line and "modules" not in run_line
    plain = sub.render_batch_script(sub.BatchRequest(spec="s.toml", out_dir="runs/s",
                                                     site="summit", options={"project": "P1"}))
    assert "alloc_flags" not in plain and "module load" not in plain


@pytest.mark.parametrize("option, value", [("alloc_flags", "smt4;x=y"), ("alloc_flags", "a\"b"),
                                           ("modules", "cuda;$(rm)")])
def test_summit_flags_and_modules_are_plain_names(option, value):
    request = sub.BatchRequest(spec="s.toml", out_dir="runs/s", site="summit",
                               options={"project": "P1", option: value})
    with pytest.raises(SpecError) as info:
        sub.render_batch_script(request)
    assert info.value.field.startswith(f"summit.{option}[")


def test_summit_pilot_jobs_get_alloc_flags_and_modules(tmp_path):
    from site_configs import load_site

    cfg = load_site("summit", tmp_path, options={"project": "P1", "trials_per_gpu": "2",
                                                 "modules": "open-ce", "address": "10.0.0.1"})
    provider = cfg.executors[0].provider
    assert '-alloc_flags "gpumps"' in provider.scheduler_options
    assert "module load open-ce" in provider.worker_init
