"""Site configurations: option checking, GPU detection and pinning, and the text of the pilot
jobs Parsl would submit (Slurm and LSF), without needing either scheduler."""

from __future__ import annotations

import argparse
import collections
import os
import stat
import time
from pathlib import Path

import pytest

import site_configs
from genodl_core.errors import SpecError
from site_configs import (SITES, add_site_arguments, describe_sites, format_walltime, get_site,
                          load_site, parse_option_pairs, parse_walltime, site_options_from_args)
from site_configs.local_htex import accelerator_entries, detect_gpus

pytestmark = pytest.mark.timeout(120)

#: Options that make every site buildable on a machine without ib0/hsn0 and without accounts.
BUILDABLE = {
    "local_threads": {},
    "local_htex": {"gpus": "none"},
    "slurm": {"address": "127.0.0.1"},
    "summit": {"project": "ABC123", "address": "127.0.0.1"},
    "frontier": {"account": "ABC123", "address": "127.0.0.1"},
    "perlmutter": {"account": "m0000_g", "address": "127.0.0.1"},
}


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def parsl_pins(entries: list[str], nvidia_smi_count: int | None) -> list[str]:
    """What Parsl's worker pool does with each accelerator entry (process_worker_pool.py)."""
    pool = len(entries)
    pinned = []
    for entry in entries:
        if nvidia_smi_count is None:
            pinned.append(entry)
            continue
        try:
            per = pool // nvidia_smi_count
            pinned.append(str(int(entry) // per))
        except (TypeError, ValueError, ZeroDivisionError):
            pinned.append(entry)
    return pinned


# --- registry and options -----------------------------------------------------------------------

def test_all_sites_registered_and_build_fresh_configs(tmp_path):
    assert set(SITES) == set(BUILDABLE)

    def handler(exc, record):
        return 1.0

    for name, options in BUILDABLE.items():
        first = load_site(name, tmp_path, retries=3, retry_handler=handler, options=options)
        second = load_site(name, tmp_path, options=options)
        assert first is not second and first.executors[0] is not second.executors[0]
        assert first.run_dir == str(tmp_path / "runinfo")
        assert first.usage_tracking == 0
        assert first.retries == 3 and first.retry_handler is handler
        assert second.retries == 0
        assert len(first.executors) == 1 and first.executors[0].label == name


def test_unknown_site_lists_known_ones(tmp_path):
    with pytest.raises(SpecError) as info:
        load_site("sumit", tmp_path)
    assert info.value.field == "site" and "summit" in info.value.allowed


def test_unknown_option_lists_allowed_ones(tmp_path):
    with pytest.raises(SpecError) as info:
        load_site("slurm", tmp_path, options={"partion": "gpu"})
    err = info.value
    assert err.field == "slurm.partion" and err.value == "gpu"
    assert "partition" in err.allowed and "account" in err.allowed


@pytest.mark.parametrize("site,key,value,fragment", [
    ("local_threads", "max_threads", "two", "expected an integer"),
    ("local_threads", "max_threads", "0", "out of range"),
    ("slurm", "exclusive", "maybe", "expected a boolean"),
    ("slurm", "mode", "outside", "unknown choice"),
    ("slurm", "walltime", "1:75", "below 60"),
    ("summit", "walltime", "soon", "not a walltime"),
    ("local_htex", "trials_per_gpu", "-1", "out of range"),
])
def test_bad_option_values_name_option_and_value(tmp_path, site, key, value, fragment):
    options = dict(BUILDABLE[site], **{key: value})
    with pytest.raises(SpecError) as info:
        load_site(site, tmp_path, options=options)
    assert info.value.field == f"{site}.{key}"
    assert info.value.value == value
    assert fragment in str(info.value)


def test_options_accept_strings_and_typed_values():
    site = get_site("slurm")
    from_cli = site.resolve({"nodes": "3", "exclusive": "no", "walltime": "90"})
    typed = site.resolve({"nodes": 3, "exclusive": False, "walltime": 90})
    assert from_cli == typed
    assert from_cli["nodes"] == 3 and from_cli["exclusive"] is False
    assert from_cli["walltime"] == "01:30:00"
    assert from_cli["partition"] is None  # unset options stay unset (scheduler default)


@pytest.mark.parametrize("kind, value", [
    ("int", "3"), ("int", 3), ("int", 2.0), ("int", "x"), ("int", True), ("bool", "no"),
    ("bool", 1), ("float", "inf"), ("float", "0.25"), ("str", "abc"), ("str", 5),
])
def test_options_convert_as_spec_fields_do(kind, value):
    """Site options and trial specs share one converter: same values, same errors."""
    from genodl_core.typed import convert

    option = site_configs.SiteOption("opt", kind, None, "help")
    tp = {"int": int, "float": float, "bool": bool, "str": str}[kind]
    try:
        expected = convert(tp, value, "site.opt", text=True)
    except SpecError as err:
        with pytest.raises(SpecError) as info:
            option.convert(value, "site")
        assert str(info.value) == str(err) and info.value.field == "site.opt"
    else:
        assert option.convert(value, "site") == expected


@pytest.mark.parametrize("text,seconds", [
    ("00:10:00", 600), ("1:30", 5400), ("90", 5400), (45, 2700), ("100:00:00", 360000)])
def test_walltime_forms(text, seconds):
    assert parse_walltime(text) == seconds
    assert parse_walltime(format_walltime(seconds)) == seconds


@pytest.mark.parametrize("bad", ["0", "1:2:3:4", "-5", "1h", "", True])
def test_walltime_rejects(bad):
    with pytest.raises(SpecError):
        parse_walltime(bad)


def test_option_pairs_and_cli_shorthands():
    assert parse_option_pairs(["a=1", "b=x=y", "a=2"]) == {"a": "2", "b": "x=y"}
    with pytest.raises(SpecError) as info:
        parse_option_pairs(["novalue"])
    assert info.value.field == "-o/--option"
    parser = argparse.ArgumentParser()
    add_site_arguments(parser)
    args = parser.parse_args(["--nodes", "2", "--walltime", "1:00", "-o", "walltime=0:20",
                              "-o", "account=abc"])
    assert args.site == "local_threads"
    assert site_options_from_args(args) == {"nodes": "2", "walltime": "0:20", "account": "abc"}


def test_required_placeholders(tmp_path):
    with pytest.raises(SpecError) as info:
        load_site("summit", tmp_path, options={"address": "127.0.0.1"})
    assert info.value.field == "summit.project" and "required" in str(info.value)
    with pytest.raises(SpecError) as info:
        load_site("frontier", tmp_path, options={"address": "127.0.0.1"})
    assert info.value.field == "frontier.account"
    # Inside an allocation the job is already charged: no account needed.
    cfg = load_site("frontier", tmp_path, options={"address": "127.0.0.1", "mode": "inside"})
    assert type(cfg.executors[0].provider).__name__ == "LocalProvider"


def test_missing_interface_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as info:
        load_site("summit", tmp_path, options={"project": "ABC123", "interface": "nosuch9"})
    assert info.value.field == "summit.interface" and "lo" in info.value.allowed


def test_describe_sites_lists_every_option():
    text = describe_sites()
    for name, site in SITES.items():
        assert f"\n{name}" in "\n" + text
        for opt in site.options:
            assert opt.name in text
    assert "<required>" in text  # account/project placeholders are flagged
    assert "local_threads (default)" in text


def test_slots_follow_options():
    assert get_site("local_threads").slots({"max_threads": 3}) == 3
    assert get_site("local_htex").slots({"gpus": "0,1,2", "trials_per_gpu": 2}) == 6
    assert get_site("local_htex").slots({"gpus": "none", "cpu_workers": 5}) == 5
    assert get_site("summit").slots({"nodes": 2, "max_blocks": 2}) == 24
    assert get_site("summit").slots({"nodes": 2, "max_blocks": 2, "mode": "inside"}) == 12
    assert get_site("slurm").slots({"nodes": 2, "gpus_per_node": 4, "trials_per_gpu": 2}) == 16
    assert get_site("slurm").slots({"nodes": 2, "cpu_workers": 3}) == 6
    assert get_site("frontier").slots({}) == 8
    assert get_site("perlmutter").slots({"nodes": 3}) == 12


def test_sites_never_import_workflows():
    import subprocess
    import sys

    code = ("import sys, site_configs; "
            "bad = [m for m in sys.modules if m == 'workflows' or m.startswith('workflows.')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(site_configs.__file__).parents[1])
    assert done.returncode == 0, done.stdout + done.stderr


# --- GPU detection and pinning -------------------------------------------------------------------

def test_detect_gpus_prefers_visibility_variables(monkeypatch, tmp_path):
    fake_tool(tmp_path / "bin", "nvidia-smi",
              'for i in 0 1 2 3; do echo "GPU $i: Fake (UUID: GPU-$i)"; done\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    inv = detect_gpus()
    assert inv.devices == ("0", "1", "2", "3") and inv.nvidia_smi_count == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    inv = detect_gpus()
    assert inv.devices == ("2", "3") and inv.source == "CUDA_VISIBLE_DEVICES"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus().devices == ()


def test_detect_gpus_amd_and_none(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, no rocm-smi
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    inv = detect_gpus()
    assert inv.devices == () and inv.source == "none found"
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "4,5,6")
    inv = detect_gpus()
    assert inv.devices == ("4", "5", "6") and inv.source == "ROCR_VISIBLE_DEVICES"


@pytest.mark.parametrize("gpus,per_gpu,smi", [
    (["0", "1"], 1, None), (["0", "1"], 2, None), (["0", "1", "2", "3", "4", "5"], 1, 6),
    (["0", "1", "2", "3", "4", "5"], 3, 6), (["2", "3"], 1, 4), (["2", "3"], 2, 4),
    (["2", "3"], 4, 4), (["0"], 4, 1), (["GPU-ab", "GPU-cd"], 2, 2), (["1", "3"], 3, 4)])
def test_accelerator_entries_pin_each_worker_to_its_gpu(gpus, per_gpu, smi):
    entries = accelerator_entries(gpus, per_gpu, smi)
    assert len(entries) == len(gpus) * per_gpu
    pinned = parsl_pins(entries, smi)
    assert collections.Counter(pinned) == collections.Counter({g: per_gpu for g in gpus})
    # interleaved: the first len(gpus) workers already cover every GPU
    assert set(pinned[:len(gpus)]) == set(gpus)


def test_local_htex_packing_options(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: entries are used unchanged
    cfg = load_site("local_htex", tmp_path, options={"gpus": "0,1", "trials_per_gpu": "2"})
    htex = cfg.executors[0]
    assert list(htex.available_accelerators) == ["0", "1", "0", "1"]
    assert htex.max_workers_per_node == 4
    assert htex.address == "127.0.0.1"
    cpu = load_site("local_htex", tmp_path, options={"gpus": "none", "cpu_workers": "3"})
    assert list(cpu.executors[0].available_accelerators) == []
    assert cpu.executors[0].max_workers_per_node == 3


def test_cpu_workers_see_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    hidden = "export CUDA_VISIBLE_DEVICES="
    cpu = load_site("local_htex", tmp_path, options={"gpus": "none", "worker_init": "echo hi"})
    init = cpu.executors[0].provider.worker_init.splitlines()
    assert hidden in init and init[-1] == "echo hi"
    gpu = load_site("local_htex", tmp_path, options={"gpus": "0,1"})
    assert hidden not in gpu.executors[0].provider.worker_init
    for mode in ("pilot", "inside"):
        slurm_cpu = load_site("slurm", tmp_path, options={"account": "a", "mode": mode,
                                                          "address": "127.0.0.1"})
        assert hidden in slurm_cpu.executors[0].provider.worker_init.splitlines()
    slurm_gpu = load_site("slurm", tmp_path, options={"account": "a", "gpus_per_node": "2",
                                                      "address": "127.0.0.1"})
    assert hidden not in slurm_gpu.executors[0].provider.worker_init


@pytest.mark.parametrize("value,normal", [
    ("auto", "auto"), ("NONE", "none"), ("0,2", "0,2"), (" 1 , 3 ", "1,3"),
    ("GPU-5f2c1e0a-aaaa-bbbb-cccc-0123456789ab", "GPU-5f2c1e0a-aaaa-bbbb-cccc-0123456789ab"),
    ("MIG-GPU-5f2c1e0a/1/0,MIG-GPU-5f2c1e0a/2/0", "MIG-GPU-5f2c1e0a/1/0,MIG-GPU-5f2c1e0a/2/0")])
def test_local_htex_gpus_forms(value, normal):
    assert get_site("local_htex").resolve({"gpus": value})["gpus"] == normal


@pytest.mark.parametrize("value,fragment", [
    ("all", "'all' is not a device index"), ("0;1", "'0;1'"), ("0,,1", "'' is not"),
    ("-1", "'-1'"), ("", "'' is not"), ("0,1,0", "device 0 is listed twice"),
    ("cpu", "'cpu'")])
def test_local_htex_gpus_rejects(tmp_path, value, fragment):
    with pytest.raises(SpecError) as info:
        load_site("local_htex", tmp_path, options={"gpus": value})
    assert info.value.field == "local_htex.gpus" and info.value.value == value
    assert fragment in str(info.value) and "auto | none | ids like 0,2" in str(info.value)


def test_local_cpu_defaults_follow_the_affinity_mask(monkeypatch):
    import site_configs.local_htex as local_htex
    import site_configs.local_threads as local_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 256)
    assert site_configs.usable_cores() == 4
    assert local_threads.default_threads() == 2
    assert local_htex.default_cpu_workers() == 2, "half the usable cores, not of cpu_count()"


# --- pilot-job text: what Parsl would hand to sbatch / bsub --------------------------------------

def capture_submit(provider, tmp_path, monkeypatch, tool: str, answer: str) -> tuple[str, str]:
    """Run the provider's real submit() against a fake ``sbatch``/``bsub`` on PATH.

    The fake records its arguments and the script it was given (as a file argument or on
    stdin) and answers like the real scheduler.
    """
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, tool,
              f'echo "$@" > "{tmp_path}/args"\n'
              f'if [ -n "$1" ]; then cat "$1" > "{tmp_path}/script"; '
              f'else cat > "{tmp_path}/script"; fi\n'
              f'echo "{answer}"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    provider.script_dir = str(tmp_path)
    job_id = provider.submit("process_worker_pool.py --flags", tasks_per_node=1,
                             job_name="genodl.test")
    assert job_id is not None
    return (tmp_path / "args").read_text().strip(), (tmp_path / "script").read_text()


def test_summit_pilot_bsub_script_and_jsrun_line(tmp_path, monkeypatch):
    cfg = load_site("summit", tmp_path, options={
        "project": "BIO123", "address": "10.0.0.1", "nodes": "2", "walltime": "1:30",
        "queue": "debug", "worker_init": "module load open-ce", "trials_per_gpu": "2"})
    htex = cfg.executors[0]
    provider = htex.provider
    assert type(provider).__name__ == "LSFProvider"
    args, script = capture_submit(provider, tmp_path, monkeypatch, "bsub",
                                  "Job <4242> is submitted to queue <debug>.")
    # bsub must read the script on stdin (no file argument), or LSF ignores the #BSUB lines
    assert args == ""
    for line in ("#BSUB -P BIO123", "#BSUB -q debug", "#BSUB -nnodes 2", "#BSUB -W 90",
                 "module load open-ce"):
        assert line in script.splitlines(), line
    jsrun = [ln for ln in script.splitlines() if ln.startswith("jsrun ")]
    assert len(jsrun) == 1
    # one resource set per node owning all 42 cores and 6 GPUs (jsrun's default is 1 core, 0 GPU)
    assert jsrun[0].startswith("jsrun -n 2 -r 1 -a1 -c42 -g6 --bind=none --smpiargs=off ")
    assert list(provider.resources) == ["4242"]  # the id Parsl parsed from the answer
    # 6 GPUs x 2 workers, pinned the way Parsl's pool reads them on a node with 6 GPUs
    assert collections.Counter(parsl_pins(list(htex.available_accelerators), 6)) == \
        collections.Counter({str(g): 2 for g in range(6)})


def test_summit_inside_mode_uses_jsrun_from_the_launch_node(tmp_path):
    cfg = load_site("summit", tmp_path, options={"mode": "inside", "nodes": "4",
                                                "address": "10.0.0.1"})
    provider = cfg.executors[0].provider
    assert type(provider).__name__ == "LocalProvider"
    assert provider.nodes_per_block == 4
    line = [ln for ln in provider.launcher("CMD", 1, 4).splitlines() if ln.startswith("jsrun")][0]
    assert line.startswith("jsrun -n 4 -r 1 -a1 -c42 -g6 --bind=none")


def test_slurm_pilot_sbatch_script(tmp_path, monkeypatch):
    cfg = load_site("slurm", tmp_path, options={
        "partition": "gpu", "account": "proj1", "qos": "normal", "constraint": "a100",
        "nodes": "2", "walltime": "0:45", "gpus_per_node": "4", "cores_per_node": "32",
        "sbatch_options": "--mem=0; --mail-type=END", "address": "127.0.0.1"})
    htex = cfg.executors[0]
    assert list(htex.available_accelerators) == ["0", "1", "2", "3"]
    args, script = capture_submit(htex.provider, tmp_path, monkeypatch, "sbatch",
                                  "Submitted batch job 77")
    assert args.startswith(str(tmp_path))  # the script file is the argument
    assert list(htex.provider.resources) == ["77"]
    lines = script.splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --qos=normal",
                 "#SBATCH --constraint=a100", "#SBATCH --nodes=2", "#SBATCH --time=45",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --exclusive", "#SBATCH --mem=0",
                 "#SBATCH --mail-type=END"):
        assert line in lines, line
    srun = [ln for ln in lines if ln.startswith("srun ")]
    assert len(srun) == 1
    assert "--ntasks 2" in srun[0] and "--ntasks-per-node=1" in srun[0]
    assert "--cpus-per-task=32" in srun[0] and "--gpus-per-node=4" in srun[0]
    assert "--cpu-bind=none" in srun[0]


def test_slurm_inside_mode_runs_srun_on_the_allocation(tmp_path):
    cfg = load_site("slurm", tmp_path, options={"mode": "inside", "nodes": "3",
                                               "address": "127.0.0.1", "cpu_workers": "4"})
    htex = cfg.executors[0]
    assert type(htex.provider).__name__ == "LocalProvider"
    assert htex.max_workers_per_node == 4
    srun = [ln for ln in htex.provider.launcher("CMD", 1, 3).splitlines()
            if ln.startswith("srun")][0]
    assert "--nodes=3" in srun and "--ntasks 3" in srun
    # No cores_per_node: the step asks for every CPU the job holds on the node, not one.
    assert "--cpus-per-task=$SLURM_CPUS_ON_NODE" in srun


def test_slurm_pilot_step_asks_for_all_cpus_and_warns_about_shared_nodes(tmp_path, caplog):
    cfg = load_site("slurm", tmp_path, options={"account": "a", "address": "127.0.0.1"})
    launch = cfg.executors[0].provider.launcher("CMD", 1, 1)
    srun = [ln for ln in launch.splitlines() if ln.startswith("srun")][0]
    assert "--cpus-per-task=$SLURM_CPUS_ON_NODE" in srun and "--cpu-bind=none" in srun
    assert not [r for r in caplog.records if "one CPU per node" in r.getMessage()]
    load_site("slurm", tmp_path, options={"account": "a", "address": "127.0.0.1",
                                          "exclusive": "false"})
    assert [r for r in caplog.records if "one CPU per node" in r.getMessage()]


def test_frontier_and_perlmutter_presets(tmp_path):
    frontier = load_site("frontier", tmp_path, options={"account": "BIO1",
                                                       "address": "127.0.0.1",
                                                       "trials_per_gpu": "2"})
    htex = frontier.executors[0]
    # AMD nodes have no nvidia-smi: Parsl uses entries unchanged (ROCR_VISIBLE_DEVICES)
    assert collections.Counter(htex.available_accelerators) == \
        collections.Counter({str(g): 2 for g in range(8)})
    assert htex.provider.partition == "batch"
    assert "--gpus-per-node=8" in htex.provider.scheduler_options
    assert "--cpus-per-task=56" in htex.provider.launcher.overrides
    perl = load_site("perlmutter", tmp_path, options={"account": "m0000_g",
                                                     "address": "127.0.0.1"})
    provider = perl.executors[0].provider
    assert provider.constraint == "gpu" and provider.qos == "regular"
    assert list(perl.executors[0].available_accelerators) == ["0", "1", "2", "3"]


# --- the local sites really run apps -------------------------------------------------------------

def test_local_threads_runs_apps(tmp_path):
    import parsl

    @parsl.python_app
    def square(x):
        return x * x

    with parsl.load(load_site("local_threads", tmp_path, options={"max_threads": 2})):
        assert [square(i).result(timeout=30) for i in range(4)] == [0, 1, 4, 9]
    assert (tmp_path / "runinfo").is_dir()


@pytest.mark.timeout(180)
def test_local_htex_pins_packed_workers_like_a_gpu_node(monkeypatch, tmp_path):
    """Four workers on two fake GPUs: each GPU gets two, as the worker pool itself decides.

    A fake ``nvidia-smi`` reporting two devices makes Parsl's pool take its NVIDIA path (the
    integer division over the entries), the one a real GPU node takes.
    """
    import parsl

    fake_tool(tmp_path / "bin", "nvidia-smi",
              'echo "GPU 0: Fake (UUID: GPU-0)"; echo "GPU 1: Fake (UUID: GPU-1)"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # workers are fresh interpreters: let them import this test module for the app
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))

    @parsl.python_app
    def visible_gpu(delay):
        import os
        import time

        time.sleep(delay)  # hold the worker so that every worker gets one task
        return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()

    cfg = load_site("local_htex", tmp_path / "run",
                    options={"gpus": "auto", "trials_per_gpu": 2, "encrypted": "false"})
    assert len(cfg.executors[0].available_accelerators) == 4
    t0 = time.monotonic()
    with parsl.load(cfg):
        results = [f.result(timeout=120) for f in [visible_gpu(2.0) for _ in range(4)]]
    assert len({pid for _, pid in results}) == 4, results
    assert collections.Counter(g for g, _ in results) == {"0": 2, "1": 2}, results
    assert time.monotonic() - t0 < 150
