"""Limits and checks of sweep files and `genodl plan`: safe sweep names, a trial cap counted
before anything is expanded, finite ranges and intervals, [run] sites and options checked when
planning, `--limit`, and `gather` on a folder that is no run directory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from genodl_core.errors import SpecError
from tests.workflow.conftest import tiny_lr_sweep_toml
from workflows.cli import main as genodl
from workflows.sweep import (DEFAULT_MAX_TRIALS, load_sweep, plan_table, sweep_from_dict,
                             sweep_from_resolved)

pytestmark = pytest.mark.timeout(60)

BASE = tiny_lr_sweep_toml("tiny", 2)


def sweep_file(tmp_path: Path, sweep_lines: str = "", axes: str = "seed = [0, 1]",
               run: str = "", name: str = "s.toml") -> Path:
    """The tiny LR sweep with extra [sweep] lines, other axes and a [run] table."""
    text = BASE.replace('[sweep]\nname = "tiny"\n', f'[sweep]\nname = "tiny"\n{sweep_lines}\n')
    text = text.replace("seed = [0, 1]", axes)
    path = tmp_path / name
    path.write_text(text + (f"\n[run]\n{run}\n" if run else ""))
    return path


def plan_error(tmp_path: Path, capsys, spec: Path, *args: str) -> str:
    assert genodl(["plan", str(spec), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# --- item 9: sweep names ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../x", "a/../../b", "a/b", "a..b", "-x", "_x",
                                  ".hidden", "", "a b", "a\nb"])
def test_unsafe_sweep_names_are_refused(name):
    table = load_sweep_table(name)
    with pytest.raises(SpecError) as info:
        sweep_from_dict(table)
    assert info.value.field == "sweep.name" and info.value.value == name
    assert "letters, digits" in str(info.value) and "no '..'" in str(info.value)


@pytest.mark.parametrize("name", ["nt3-label-noise_v2", "a.b", "0", "D.GEX-1"])
def test_safe_sweep_names_are_kept(name):
    assert sweep_from_dict(load_sweep_table(name)).name == name


def test_a_name_taken_from_the_file_must_fit_too(tmp_path, capsys):
    path = sweep_file(tmp_path, name="..toml")
    path.write_text(path.read_text().replace('name = "tiny"\n', ""))
    err = plan_error(tmp_path, capsys, path)
    assert "sweep.name='.'" in err and "set [sweep] name" in err


def test_plan_refuses_a_name_that_would_leave_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path)
    path.write_text(path.read_text().replace('name = "tiny"', 'name = ".."'))
    assert "sweep.name='..'" in plan_error(tmp_path, capsys, path)
    assert genodl(["run", str(path), "--no-gather"]) == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "trials").exists()


def load_sweep_table(name: str) -> dict:
    from genodl_core.toml import loads

    table = loads(BASE)
    table["sweep"]["name"] = name
    return table


# --- item 10: a cap on the number of trials, counted first --------------------------------------

@pytest.mark.parametrize("axis,needle", [
    ('"train.learning_rate" = { start = 0.001, stop = inf, step = 0.001 }', "stop=inf"),
    ('"train.learning_rate" = { start = -inf, stop = 1.0, step = 0.1 }', "start=-inf"),
    ('"train.learning_rate" = { start = 0.1, stop = 1.0, step = nan }', "step=nan"),
    ('"train.learning_rate" = { start = 0.1, stop = nan, num = 3 }', "stop=nan"),
])
def test_ranges_need_finite_numbers(tmp_path, capsys, axis, needle):
    err = plan_error(tmp_path, capsys, sweep_file(tmp_path, axes=f"seed = [0]\n{axis}"))
    assert needle in err and "a finite number" in err


@pytest.mark.parametrize("axis,count", [
    ("seed = { start = 0, stop = 9223372036854775807, step = 1 }", 2 ** 63),
    ("seed = { start = 0, stop = 10000000, num = 10000000 }", 10_000_000),
    ("seed = { start = 0, stop = 100000, step = 1 }", 100_001),
])
def test_long_axes_are_refused_before_they_are_built(tmp_path, capsys, axis, count):
    t0 = time.perf_counter()
    err = plan_error(tmp_path, capsys, sweep_file(tmp_path, axes=axis))
    assert time.perf_counter() - t0 < 5
    assert f"{count} points" in err and f"cap of {DEFAULT_MAX_TRIALS} trials" in err
    assert "[sweep] max_trials" in err


def test_a_float_range_too_long_to_count_is_refused(tmp_path, capsys):
    axis = '"train.learning_rate" = { start = -1e308, stop = 1e308, step = 1e-300 }'
    err = plan_error(tmp_path, capsys, sweep_file(tmp_path, axes=f"seed = [0]\n{axis}"))
    assert "too long to count" in err


def test_the_product_of_the_axes_is_capped_and_the_cap_is_configurable(tmp_path, capsys):
    axes = 'seed = [0, 1, 2]\n"data.n_train" = [40, 50, 60]'
    err = plan_error(tmp_path, capsys, sweep_file(tmp_path, "max_trials = 8", axes))
    assert "the axes expand to 9 trials, more than the cap of 8" in err
    sweep = load_sweep(sweep_file(tmp_path, "max_trials = 9", axes))
    assert len(sweep.trials) == 9 and sweep.max_trials == 9
    # sweep.json keeps the cap, so a resumed run expands it again under the same one
    assert sweep_from_resolved(sweep.to_dict()).max_trials == 9
    # trials_per_level counts as an axis, and a zipped group counts once
    err = plan_error(tmp_path, capsys,
                     sweep_file(tmp_path, "trials_per_level = 1000000000", '"data.n_train" = [40]'))
    assert "1000000000 points" in err
    zipped = load_sweep(sweep_file(tmp_path, 'max_trials = 3\nzip = [["seed", "data.n_train"]]',
                                   axes))
    assert len(zipped.trials) == 3


@pytest.mark.parametrize("value", ["0", "-5", "true", '"many"', "1.5"])
def test_max_trials_must_be_a_positive_integer(tmp_path, capsys, value):
    assert "sweep.max_trials" in plan_error(tmp_path, capsys,
                                            sweep_file(tmp_path, f"max_trials = {value}"))


# --- item 10: [run] checked by plan; finite intervals -----------------------------------------

@pytest.mark.parametrize("run,needle", [
    ('site = "slurmm"', "run.site='slurmm'"),
    ('site = "slurm"\noptions = { nodez = 2 }', "run.options.nodez=2"),
    ('site = "slurm"\noptions = { nodes = "many" }', "run.options.nodes='many'"),
    ('site = "slurm"\noptions = { account = "a b" }', "run.options.account='a b'"),
    ('site = "local_threads"\noptions = { max_thread = 2 }', "run.options.max_thread=2"),
    ('site = "mpi"\noptions = { gpus = 2 }', "run.options.gpus=2"),
    ("progress_interval_s = nan", "run.progress_interval_s=nan"),
    ("progress_interval_s = inf", "run.progress_interval_s=inf"),
    ("checkpoint_interval_s = nan", "run.checkpoint_interval_s=nan"),
])
def test_plan_checks_the_run_table(tmp_path, capsys, run, needle):
    err = plan_error(tmp_path, capsys, sweep_file(tmp_path, run=run))
    assert needle in err and "allowed:" in err


def test_plan_accepts_a_valid_run_table_and_names_missing_required_options(tmp_path, capsys):
    assert genodl(["plan", str(sweep_file(tmp_path, run='site = "mpi"\n'
                                                        'options = { gpus_per_node = 4 }'))]) == 0
    assert genodl(["plan", str(sweep_file(tmp_path, run='site = "summit"\n'
                                                        'options = { nodes = 2 }'))]) == 0
    out = capsys.readouterr().out
    assert "option project is required by site summit" in out


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_progress_interval_must_be_finite_and_positive(tmp_path, capsys, value):
    spec = sweep_file(tmp_path)
    out = tmp_path / "run"
    for command in (["run", str(spec), "--out", str(out), "--no-gather"],
                    ["submit", str(spec), "--site", "slurm", "--out", str(out), "--dry-run"]):
        assert genodl([*command, f"--progress-interval={value}"]) == 2
        assert "--progress-interval=" in capsys.readouterr().err
    assert not out.exists()


# --- item 10: plan --limit, gather outside a run directory ------------------------------------

def test_plan_limit(tmp_path, capsys):
    spec = sweep_file(tmp_path, axes="seed = [0, 1, 2]")
    assert "--limit=-1" in plan_error(tmp_path, capsys, spec, "--limit", "-1")
    with pytest.raises(SpecError):
        plan_table(load_sweep(spec), limit=-1)
    assert genodl(["plan", str(spec), "--limit", "0"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln[:1].isdigit()]
    assert [r.split()[0] for r in rows] == ["0", "1", "2"]
    assert genodl(["plan", str(spec), "--limit", "2"]) == 0
    assert "... 1 more" in capsys.readouterr().out


def test_gather_refuses_a_folder_that_is_no_run_directory(tmp_path, capsys):
    folder = tmp_path / "not-a-run"
    (folder / "notes").mkdir(parents=True)
    (folder / "data.csv").write_text("a,b\n")
    assert genodl(["gather", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and str(folder) in err
    assert not (folder / "summary.h5").exists()
    assert genodl(["gather", str(tmp_path / "missing")]) == 2
