"""Full disks, read-only folders, files where folders should be, closed pipes.

Every command stops on such an error with one line naming the path and the exit status
:data:`workflows.cli.EXIT_OS_ERROR`, never a traceback (``--debug`` adds it) nor a storm of
'--- Logging error ---' blocks; a run stopped by a full disk leaves consistent records and
completes once space is freed; ``genodl plan | head`` ends quietly.

The full-disk test mounts a small tmpfs and the read-only test a read-only bind mount, which
need root; without root the read-only test uses mode bits instead, and the full-disk test is
skipped saying why.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from genodl_core import records
from tests.workflow.conftest import GENODL, REPO, cli_env, run_cli, tiny_lr_sweep_toml
from workflows import cli
from workflows.cli import EXIT_BROKEN_PIPE, EXIT_OS_ERROR, main as genodl
from workflows.rundir import append_event, read_events

IS_ROOT = os.geteuid() == 0

#: A trial spec of the cheapest real trial (LR baseline on tiny synthetic D-GEX data).
LR_TRIAL = """\
seed = 0
[model]
name = "lr"
[data]
source = "synthetic_dgex"
n_landmarks = 8
n_targets = 6
n_train = 60
n_val = 20
n_test = 20
n_factors = 3
seed = 0
"""


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only); skips the test, saying why, otherwise."""
    if not IS_ROOT:
        pytest.skip("a full file system is simulated with a small tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make ``path`` unwritable: a read-only bind mount as root (root ignores mode bits), mode
    0555 on every folder otherwise. Yields the errno name the commands should report."""
    if IS_ROOT:
        bound = path.with_name(path.name + "-ro")
        bound.mkdir(exist_ok=True)
        if _mount("--bind", str(path), str(bound)).returncode != 0:
            pytest.skip("root ignores mode bits, and a read-only bind mount is refused here")
        try:
            if _mount("-o", "remount,ro,bind", str(bound)).returncode != 0:
                pytest.skip("root ignores mode bits, and a read-only remount is refused here")
            os.rename(path, path.with_name(path.name + "-rw"))
            os.symlink(bound, path)
            yield "EROFS"
        finally:
            if path.is_symlink():
                path.unlink()
                os.rename(path.with_name(path.name + "-rw"), path)
            subprocess.run(["umount", "-l", str(bound)], capture_output=True, timeout=30)
        return
    folders = [Path(root) for root, _, _ in os.walk(path)]
    for folder in folders:
        folder.chmod(0o555)
    try:
        yield "EACCES"
    finally:
        for folder in folders:
            folder.chmod(0o755)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A complete run directory of two LR trials, its sweep file and a trial spec."""
    base = tmp_path_factory.mktemp("finished")
    spec = base / "lr.toml"
    spec.write_text(tiny_lr_sweep_toml("lr", 2))
    trial = base / "trial.toml"
    trial.write_text(LR_TRIAL)
    out = base / "run"
    assert genodl(["run", str(spec), "--out", str(out)]) == 0
    return out, spec, trial


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if ": error: " in line]


def _assert_one_clear_line(code: int, err: str, command: str, path_part: str,
                           errno_name: str | None = None) -> None:
    assert code == EXIT_OS_ERROR, err
    assert "Traceback" not in err and "Logging error" not in err, err
    lines = _error_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"genodl {command}: error: "), lines
    assert path_part in lines[0], lines
    if errno_name:
        assert f"[{errno_name}]" in lines[0], lines


# Read-only run directories ---------------------------------------------------------------------

#: Commands that must write into the run directory, and an argument list for each
#: (RUN: the run directory, SPEC: the sweep file, TRIAL: a trial spec).
WRITING = {
    "run": ["run", "SPEC", "--out", "RUN"],
    "rerun": ["rerun", "RUN"],
    "gather": ["gather", "RUN", "--full"],
    "report": ["report", "RUN", "--regather"],
    "plot": ["plot", "RUN"],
    "submit": ["submit", "SPEC", "--site", "slurm", "-o", "account=x", "-o", "gpus_per_node=1",
               "--out", "RUN", "--dry-run"],
    "trial": ["trial", "TRIAL", "--out", "RUN"],
    "bench": ["bench", "--quick", "--modes", "plain", "--epochs", "2", "--out", "RUN"],
}
#: Commands that only read: they work on a read-only run directory.
READING = {
    "status": ["status", "RUN"],
    "plan": ["plan", "SPEC"],
    "sites": ["sites"],
    "report": ["report", "RUN"],
}


def _args(template: list[str], run: Path, spec: Path, trial: Path) -> list[str]:
    values = {"RUN": str(run), "SPEC": str(spec), "TRIAL": str(trial)}
    return [values.get(a, a) for a in template]


@pytest.mark.parametrize("name", sorted(WRITING))
def test_writing_commands_on_a_read_only_run_directory_print_one_line(finished_run, name,
                                                                       capfd):
    out, spec, trial = finished_run
    with read_only(out) as errno_name:
        capfd.readouterr()
        code = genodl(_args(WRITING[name], out, spec, trial))
        err = capfd.readouterr().err
    # The path named is in the run directory (as given, or as the bind mount resolves it).
    _assert_one_clear_line(code, err, name, f"/{out.name}", errno_name)


@pytest.mark.parametrize("name", sorted(READING))
def test_reading_commands_work_on_a_read_only_run_directory(finished_run, name, capfd):
    out, spec, trial = finished_run
    with read_only(out):
        code = genodl(_args(READING[name], out, spec, trial))
        captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and not _error_lines(captured.err)


# Files where folders should be -------------------------------------------------------------

@pytest.mark.parametrize("template, errno_name", [
    (["run", "SPEC", "--out", "FILE"], "EEXIST"),
    (["run", "SPEC", "--out", "/dev/null/x"], "ENOTDIR"),
    (["trial", "TRIAL", "--out", "FILE"], "ENOTDIR"),
    (["trial", "TRIAL", "--out", "/dev/null/x"], "ENOTDIR"),
    (["submit", "SPEC", "--site", "slurm", "-o", "account=x", "-o", "gpus_per_node=1",
      "--out", "FILE", "--dry-run"], "ENOTDIR"),
    (["submit", "SPEC", "--site", "slurm", "-o", "account=x", "-o", "gpus_per_node=1",
      "--out", "/dev/null/x", "--dry-run"], "ENOTDIR"),
    (["gather", "RUN", "--out", "FILE/summary.h5"], None),
    (["report", "RUN", "--csv", "/dev/null/x/stats.csv"], None),
    (["bench", "--quick", "--modes", "plain", "--epochs", "2", "--out", "/dev/null/x"],
     "ENOTDIR"),
], ids=["run-file", "run-devnull", "trial-file", "trial-devnull", "submit-file",
        "submit-devnull", "gather-file", "report-devnull", "bench-devnull"])
def test_an_output_path_through_a_file_is_one_line(finished_run, tmp_path, template,
                                                   errno_name, capfd):
    """``--out /etc/passwd`` and ``--out /dev/null/x``: a regular file stands for the former,
    so that no test ever aims a write at a system file."""
    out, spec, trial = finished_run
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0::/root:/bin/sh\n")
    args = [a.replace("FILE", str(file)) for a in _args(template, out, spec, trial)]
    capfd.readouterr()
    code = genodl(args)
    err = capfd.readouterr().err
    target = next(a for a in args if "passwd" in a or "/dev/null" in a)
    _assert_one_clear_line(code, err, args[0], "passwd" if "passwd" in target else "/dev/null",
                           errno_name)
    assert file.read_text() == "root:x:0:0::/root:/bin/sh\n"


def test_debug_adds_the_traceback(finished_run, tmp_path, capfd):
    out, spec, _ = finished_run
    for args in (["--debug", "run", str(spec), "--out", "/dev/null/x"],
                 ["run", str(spec), "--out", "/dev/null/x", "--debug"]):
        capfd.readouterr()
        assert genodl(args) == EXIT_OS_ERROR
        err = capfd.readouterr().err
        assert "Traceback" in err and "NotADirectoryError" in err
        assert len(_error_lines(err)) == 1


def test_an_error_without_a_file_name_names_one_from_its_chain_or_the_location():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/scratch/run/a.json")
        except OSError:
            raise OSError(errno.ENOSPC, "No space left on device")  # a later flush
    except OSError as err:
        line = cli.describe_os_error(err, where="/scratch/run")
    assert line.startswith("/scratch/run/a.json: No space left on device [ENOSPC]; ")
    line = cli.describe_os_error(OSError(errno.ENOSPC, "No space left on device"),
                                 where="/scratch/run")
    assert "(writing under /scratch/run)" in line and "free space" in line


# Logging and pipes ---------------------------------------------------------------------------

class _FullStream(io.StringIO):
    def write(self, text):  # noqa: D102 - a stream on a full disk
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_log_handler_prints_no_logging_error_blocks(capsys, monkeypatch):
    monkeypatch.setattr(logging, "raiseExceptions", True)
    cli.configure_logging(verbose=False)
    handler = logging.StreamHandler(_FullStream())
    logger = logging.getLogger("workflows.test_disk_errors")
    logger.addHandler(handler)
    try:
        for i in range(50):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
    assert "Logging error" not in capsys.readouterr().err


def test_a_closed_pipe_ends_plan_quietly(finished_run):
    """`genodl plan ... | head`: the reader is gone before the command writes."""
    _, spec, _ = finished_run
    proc = subprocess.Popen([*GENODL, "plan", str(spec)], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert code == EXIT_BROKEN_PIPE, err
    assert err == ""


# The attempts log on a full disk -------------------------------------------------------------

def test_an_event_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
    log_path = tmp_path / "attempts.jsonl"
    append_event(log_path, {"event": "start", "trial_id": "a"})
    before = log_path.read_bytes()
    real_write = os.write

    def short_write(fd, data):
        return real_write(fd, data[:7])  # the disk takes only the first bytes

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError) as info:
        append_event(log_path, {"event": "end", "trial_id": "a"})
    monkeypatch.setattr(os, "write", real_write)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(log_path)
    assert log_path.read_bytes() == before
    # A line torn all the same (another writer appended meanwhile) never swallows the next.
    with open(log_path, "ab") as fh:
        fh.write(b'{"event": "en')
    append_event(log_path, {"event": "end", "trial_id": "b"})
    events, _ = read_events(log_path)
    assert [e["trial_id"] for e in events] == ["a", "b"]


# A full disk during a run ----------------------------------------------------------------------

def _states(run_dir: Path) -> dict[str, str]:
    done = run_cli("status", str(run_dir), "--json", timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return {t["trial_id"]: t["state"] for t in json.loads(done.stdout)["trials"]}


def test_a_full_disk_stops_the_run_with_one_line_and_a_resume_completes(tmp_path):
    n_trials = 60  # about 40 records fit into 1.5 MiB
    spec = tmp_path / "many.toml"
    spec.write_text(tiny_lr_sweep_toml("many", n_trials))
    with small_tmpfs(tmp_path / "small", "1536k") as disk:
        out = disk / "run"
        done = run_cli("run", str(spec), "--out", str(out), "--retries", "2", timeout=300)
        _assert_one_clear_line(done.returncode, done.stderr, "run", str(out), "ENOSPC")
        # No storm: besides progress lines (one per settled trial at most), a few lines of the
        # run and the error; no line per queued trial, no retry warnings.
        other = [line for line in done.stderr.splitlines() if "workflows.progress" not in line]
        assert len(other) < 15, done.stderr
        assert "retryable" not in done.stderr, done.stderr
        states = _states(out)
        assert set(states.values()) <= {"done", "missing", "interrupted", "failed"}, states
        assert 0 < list(states.values()).count("done") < n_trials
        for tid, state in states.items():
            if state == "done":
                assert records.is_complete(out / "trials" / tid, tid)
        lines = (out / "logs" / "attempts.jsonl").read_bytes().splitlines()
        assert all(json.loads(line) for line in lines)  # no torn line

        assert _mount("-o", "remount,size=32m", str(disk)).returncode == 0
        done = run_cli("run", str(spec), "--out", str(out), timeout=300)
        assert done.returncode == 0, done.stderr
        assert set(_states(out).values()) == {"done"}
        assert (out / "summary.h5").is_file()
        lines = (out / "logs" / "attempts.jsonl").read_bytes().splitlines()
        assert all(json.loads(line) for line in lines)


def test_a_read_only_mode_is_refused_like_a_read_only_mount(tmp_path, capfd):
    """Without root, mode bits make a folder unwritable (EACCES); as root this test checks the
    same one line for a folder made unwritable by mode bits being ignored: it is skipped."""
    if IS_ROOT:
        pytest.skip("root ignores mode bits; the read-only bind mount tests cover this as root")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        spec = tmp_path / "lr.toml"
        spec.write_text(tiny_lr_sweep_toml("lr", 1))
        code = genodl(["run", str(spec), "--out", str(folder / "run")])
        err = capfd.readouterr().err
    finally:
        folder.chmod(0o755)
    _assert_one_clear_line(code, err, "run", str(folder), "EACCES")
