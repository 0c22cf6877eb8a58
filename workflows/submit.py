"""Batch scripts that run a whole sweep inside one allocation (``genodl submit``).

The script asks the scheduler for the nodes (``#SBATCH`` or ``#BSUB`` lines built from the
site's options), activates the environment and runs ``genodl run SPEC --site SITE -o
mode=inside`` on the allocation's first node; the site config then starts the Parsl workers on
all nodes with ``srun`` or ``jsrun``. Because the driver lives inside the job, nothing needs a
long-lived process on a login node, and a job that hits its walltime is simply submitted again:
the driver skips finished trials.

Script text is produced by pure functions (:func:`render_batch_script`), so that the LSF path,
which cannot run outside an LSF cluster, is still checked line by line in the tests.

Nothing the user gives reaches the script unchecked (:func:`check_request`): site options are
checked against their scheduler's character set when they are read (see
:mod:`site_configs.script_values`), the job name and run directory here, and every argument of
the ``genodl run`` line is quoted with :func:`shlex.quote`. Only ``--env`` is shell code, and it
is meant to be.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from genodl_core.errors import InfrastructureError, SpecError
from site_configs import get_site, parse_walltime
from site_configs import script_values
from site_configs.slurm import walltime_signal_directive as slurm_walltime_signal
from site_configs.summit import alloc_flags_directives, module_lines
from site_configs.summit import walltime_warning_directives as lsf_walltime_warning

log = logging.getLogger(__name__)

BatchScheduler = Literal["slurm", "lsf"]

#: File name of the batch script inside the run directory, per scheduler.
SCRIPT_NAMES: dict[str, str] = {"slurm": "submit.sbatch", "lsf": "submit.lsf"}

#: Options that only shape the batch request; the driver inside the allocation does not need
#: them again (it is already in the job).
_HEADER_ONLY = {"walltime", "max_blocks", "sbatch_options", "queue", "account", "project",
                "partition", "qos", "constraint", "exclusive", "mode", "alloc_flags",
                "modules"}

#: Trial devices that train on a GPU when one is there (``auto``) or fail without one (``cuda``).
GPU_DEVICES = ("auto", "cuda")


@dataclass(frozen=True)
class BatchRequest:
    """Everything a batch script is made from.

    Parameters
    ----------
    spec
        The sweep file, as the script should name it (absolute, or relative to the directory
        the job is submitted from).
    out_dir
        The run directory, named the same way.
    site
        A site whose scheduler is ``slurm`` or ``lsf``.
    options
        Site options as given by the user (strings or typed values); defaults are not repeated.
    env
        Shell line(s) that make ``genodl`` available in the job (venv or module activation).
    job_name
        Name shown by ``squeue``/``bjobs``.
    run_args
        Further arguments of the ``genodl run`` line (``--retries 3``, ``--update-sweep``).
    """

    spec: str
    out_dir: str
    site: str
    options: Mapping[str, Any]
    env: str = ""
    job_name: str = "genodl"
    run_args: tuple[str, ...] = ()


def scheduler_of(site: str) -> BatchScheduler:
    """The batch system of ``site``.

    Raises
    ------
    SpecError
        For an unknown site or one that has no batch system (the local sites).
    """
    entry = get_site(site)
    if entry.scheduler not in ("slurm", "lsf"):
        from site_configs import SITES

        batch_sites = sorted(n for n, s in SITES.items() if s.scheduler in ("slurm", "lsf"))
        raise SpecError("--site", site, batch_sites,
                        reason="this site has no batch system to submit to")
    return entry.scheduler  # type: ignore[return-value]


def lsf_walltime(text: str) -> str:
    """LSF's ``-W [hours:]minutes`` from an ``HH:MM:SS`` walltime (seconds rounded up)."""
    minutes = math.ceil(parse_walltime(text) / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def _batch_options(request: BatchRequest) -> dict[str, Any]:
    """The site's options with defaults filled in; required ones (account) must be set.

    Raises
    ------
    SpecError
        Unknown option, bad value, ``mode`` given (the script always runs inside), or a
        required option missing.
    """
    site = get_site(request.site)
    if "mode" in request.options and str(request.options["mode"]) != "inside":
        raise SpecError(f"{request.site}.mode", request.options["mode"], ["inside"],
                        reason="a submitted batch job always runs the driver inside its allocation")
    resolved = site.resolve(request.options)
    site.check_required(resolved)
    return resolved


def _slurm_header(o: Mapping[str, Any], request: BatchRequest) -> list[str]:
    logs = f"{request.out_dir}/logs"
    lines = [
        f"#SBATCH --job-name={request.job_name}",
        f"#SBATCH --nodes={o['nodes']}",
        f"#SBATCH --time={o['walltime']}",
        "#SBATCH --ntasks-per-node=1",
    ]
    for key in ("partition", "account", "qos", "constraint"):
        if o.get(key):
            lines.append(f"#SBATCH --{key}={o[key]}")
    if o.get("cores_per_node"):
        lines.append(f"#SBATCH --cpus-per-task={o['cores_per_node']}")
    else:
        from site_configs.slurm import warn_small_cpu_request

        warn_small_cpu_request(request.site, o)
    if o["gpus_per_node"] > 0:
        lines.append(f"#SBATCH --gpus-per-node={o['gpus_per_node']}")
    if o["exclusive"]:
        lines.append("#SBATCH --exclusive")
    lines += [f"#SBATCH {option}" for option in o.get("sbatch_options") or ()]
    lines += [f"#SBATCH --output={logs}/batch-%j.out", f"#SBATCH --error={logs}/batch-%j.err"]
    lines.append(slurm_walltime_signal())
    return lines


def _lsf_header(o: Mapping[str, Any], request: BatchRequest) -> list[str]:
    logs = f"{request.out_dir}/logs"
    return [
        f"#BSUB -P {o['project']}",
        f"#BSUB -W {lsf_walltime(o['walltime'])}",
        f"#BSUB -nnodes {o['nodes']}",
        f"#BSUB -q {o['queue']}",
        f"#BSUB -J {request.job_name}",
        f"#BSUB -o {logs}/batch.%J.out",
        f"#BSUB -e {logs}/batch.%J.err",
        *lsf_walltime_warning(),
        *alloc_flags_directives(o),
    ]


def run_command(request: BatchRequest, resolved: Mapping[str, Any]) -> str:
    """The ``genodl run`` line executed inside the allocation.

    It repeats the user's options that matter to the workers (nodes, GPUs, worker_init,
    interface) and adds ``mode=inside``; options that only shaped the batch request stay out.
    ``request.run_args`` (retries, pack size, ...) follow.
    """
    parts = ["genodl", "run", request.spec, "--site", request.site, "--out", request.out_dir,
             "-o", "mode=inside"]
    given = dict(request.options)
    given.setdefault("nodes", resolved["nodes"])
    for key in sorted(given):
        if key in _HEADER_ONLY:
            continue
        value = given[key]
        if isinstance(value, bool):
            value = str(value).lower()
        parts += ["-o", f"{key}={value}"]
    parts += list(request.run_args)
    return " ".join(shlex.quote(str(p)) for p in parts)


def site_gpu_count(site: str) -> str:
    """How ``site`` requests GPUs, in words (for ``genodl sites`` and the GPU check's error)."""
    entry = get_site(site)
    if entry.scheduler not in ("slurm", "lsf"):
        return "this machine's own (local site; no batch request)"
    names = entry.option_names()
    if "gpus_per_node" not in names:
        from site_configs import summit

        return f"fixed: {summit.GPUS_PER_NODE} per node"
    default = entry.resolve({})["gpus_per_node"]
    if default:
        return f"preset: {default} per node (-o gpus_per_node=N to change)"
    return ("none preset: a sweep on device auto/cuda must give -o gpus_per_node=N "
            "(or -o gpus_per_node=0 with device \"cpu\" for CPU workers)")


def check_gpu_request(site: str, options: Mapping[str, Any], devices: Sequence[str]) -> None:
    """Refuse a batch job whose trials would train on GPUs but whose script asks for none.

    A Slurm site without a preset GPU count (the generic ``slurm``) would otherwise write a
    script without ``--gpus-per-node`` and start CPU workers, and the trials (device ``auto``)
    would silently train on CPUs, or fail on the node (device ``cuda``). CPU workers are asked
    for explicitly with ``-o gpus_per_node=0``; trials with device ``cuda`` cannot run on them.
    Sites with a known GPU count (summit, frontier, perlmutter) pass as they are.

    Raises
    ------
    SpecError
        Naming ``<site>.gpus_per_node``, the devices of the sweep and the options to set.
    """
    entry = get_site(site)
    if entry.scheduler not in ("slurm", "lsf") or "gpus_per_node" not in entry.option_names():
        return
    on_gpu = sorted(set(devices) & set(GPU_DEVICES))
    if not on_gpu:
        return
    count = entry.resolve(options)["gpus_per_node"]  # a bad value of any option fails first
    if "gpus_per_node" not in options and not count:
        raise SpecError(
            f"{site}.gpus_per_node", None,
            "-o gpus_per_node=N (GPUs per node) for GPU workers, or -o gpus_per_node=0 with "
            "device = \"cpu\" in the sweep for CPU workers",
            reason=f"the sweep's trials train on GPUs (device {'/'.join(on_gpu)}) but site "
                   f"{site!r} has no GPU count, so the job would get CPU workers")
    if count == 0 and "cuda" in on_gpu:
        raise SpecError(
            f"{site}.gpus_per_node", 0, "-o gpus_per_node=N >= 1, or device = \"cpu\" (or "
            "\"auto\") in the sweep", reason="trials with device \"cuda\" cannot run on CPU workers")


def check_request(request: BatchRequest) -> None:
    """Refuse values of ``request`` that would change the script's meaning.

    The job name and the run directory are written into directives, where a newline would start
    a shell command and a space another directive, so they must fit the scheduler's character
    set; the run directory also reaches the workers' launch command unquoted. The sweep path
    and the ``genodl run`` arguments are quoted on the run line, so they only must be single
    lines. ``--env`` is shell code by design; it must hold no NUL or carriage return.

    Raises
    ------
    SpecError
        Naming the option (``--job-name``, ``--out``, ``--env``, ``spec``), the value and the
        allowed form.
    """
    script_values.scheduler_name(request.job_name, "--job-name")
    script_values.script_path(request.out_dir, "--out")
    script_values.reject_control_characters(request.spec, "spec")
    for arg in request.run_args:
        script_values.reject_control_characters(arg, "genodl run arguments")
    script_values.shell_code(request.env, "--env")


def render_batch_script(request: BatchRequest) -> str:
    """The full text of the batch script for ``request``.

    Raises
    ------
    SpecError
        For a site without batch system, unknown or bad options, a required option
        (``account``, ``project``) left unset, or a value that does not fit its place in
        the script (:func:`check_request`).
    """
    scheduler = scheduler_of(request.site)
    check_request(request)
    resolved = _batch_options(request)
    if scheduler == "slurm":
        header = _slurm_header(resolved, request)
        submit_dir = "${SLURM_SUBMIT_DIR:-.}"
    else:
        header = _lsf_header(resolved, request)
        submit_dir = "${LS_SUBCWD:-.}"
    body = [
        "",
        f"# Written by `genodl submit` for site {request.site}: the driver runs inside this",
        "# allocation and starts one Parsl worker manager per node. Submitting the same script",
        "# again after a walltime stop finishes only the trials that are not complete yet.",
        "set -eo pipefail",
        f'cd "{submit_dir}"',
    ]
    if scheduler == "lsf":
        body += module_lines(resolved)
    if request.env.strip():
        body += request.env.strip().splitlines()
    body.append("exec " + run_command(request, resolved))  # the walltime signal reaches it
    return "\n".join(["#!/bin/bash", *header, *body]) + "\n"


def script_path(out_dir: str | Path, site: str) -> Path:
    """Where :func:`write_batch_script` puts the script: ``DIR/submit.sbatch`` or ``.lsf``."""
    return Path(out_dir) / SCRIPT_NAMES[scheduler_of(site)]


def write_batch_script(request: BatchRequest, out_dir: str | Path | None = None) -> Path:
    """Render the script and write it into the run directory (creating ``DIR/logs``).

    ``out_dir`` is where to write when ``request.out_dir`` is a path as seen from the job
    rather than from here; by default the two are the same.
    """
    target_dir = Path(out_dir if out_dir is not None else request.out_dir)
    text = render_batch_script(request)
    (target_dir / "logs").mkdir(parents=True, exist_ok=True)
    path = script_path(target_dir, request.site)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


_SLURM_ID = re.compile(r"^\s*(\d+)(?:;\S+)?\s*$")
_LSF_ID = re.compile(r"Job <(\d+)> is submitted")


def parse_job_id(scheduler: BatchScheduler, stdout: str) -> str:
    """The job id in the output of ``sbatch --parsable`` or ``bsub``.

    Raises
    ------
    InfrastructureError
        When the output holds no job id (the scheduler answered something unexpected).
    """
    pattern = _SLURM_ID if scheduler == "slurm" else _LSF_ID
    for line in stdout.splitlines():
        match = pattern.search(line)
        if match:
            return match.group(1)
    raise InfrastructureError(f"no job id in the {scheduler} answer: {stdout.strip()!r}")


def submit_script(path: str | Path, scheduler: BatchScheduler, *,
                  runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                  timeout_s: float = 60.0) -> str:
    """Submit ``path`` with ``sbatch --parsable`` or ``bsub < path`` and return the job id.

    ``bsub`` reads the script on stdin: given as an argument, LSF would ignore its ``#BSUB``
    lines.

    Raises
    ------
    InfrastructureError
        When the submit command is missing, fails or times out (its stderr is included).
    """
    path = Path(path)
    command = ["sbatch", "--parsable", str(path)] if scheduler == "slurm" else ["bsub"]
    if shutil.which(command[0]) is None:
        raise InfrastructureError(f"{command[0]} not found on PATH: submit from a {scheduler} "
                                  f"login node, or use --dry-run to only write {path}")
    stdin = None if scheduler == "slurm" else path.open("rb")
    try:
        done = runner(command, stdin=stdin, capture_output=True, timeout=timeout_s, check=False,
                      cwd=str(Path.cwd()))
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"{command[0]} did not answer within {timeout_s:.0f} s") from None
    finally:
        if stdin is not None:
            stdin.close()
    out = done.stdout.decode() if isinstance(done.stdout, bytes) else (done.stdout or "")
    err = done.stderr.decode() if isinstance(done.stderr, bytes) else (done.stderr or "")
    if done.returncode != 0:
        raise InfrastructureError(f"{command[0]} failed (exit {done.returncode}): {err.strip()}")
    job_id = parse_job_id(scheduler, out)
    log.info("submitted %s as %s job %s", path, scheduler, job_id)
    return job_id


def default_env_line() -> str:
    """Activate the virtual environment of this Python, if it runs in one."""
    if sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").exists():
        return f"source {shlex.quote(str(Path(sys.prefix) / 'bin' / 'activate'))}"
    return ""


# --- checked-in examples ------------------------------------------------------------------------

#: The example scripts under ``jobs/`` and the requests they are rendered from. Paths are relative
#: to the repository root, which is where the examples are meant to be submitted from.
EXAMPLES: dict[str, BatchRequest] = {
    "jobs/summit.lsf": BatchRequest(
        spec="jobs/examples/nt3_label_noise.toml", out_dir="runs/nt3-label-noise",
        site="summit", job_name="genodl-nt3-label-noise",
        options={"project": "ABC123", "nodes": 2, "walltime": "02:00:00",
                 "worker_init": "module load open-ce; source .venv/bin/activate"},
        env="module load open-ce\nsource .venv/bin/activate"),
    "jobs/slurm.sbatch": BatchRequest(
        spec="jobs/examples/nt3_label_noise.toml", out_dir="runs/nt3-label-noise",
        site="slurm", job_name="genodl-nt3-label-noise",
        options={"account": "ABC123", "partition": "gpu", "nodes": 2, "gpus_per_node": 4,
                 "walltime": "02:00:00", "interface": "ib0"},
        env="source .venv/bin/activate"),
}


def render_examples() -> dict[str, str]:
    """Text of every checked-in example script, keyed by its path in the repository."""
    return {path: render_batch_script(req) for path, req in EXAMPLES.items()}


def write_examples(root: str | Path) -> list[Path]:
    """Regenerate the checked-in example scripts under ``root`` (the repository)."""
    written = []
    for rel, text in render_examples().items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workflows.submit --write-examples [ROOT]``: refresh ``jobs/*.lsf|sbatch``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workflows.submit")
    parser.add_argument("--write-examples", metavar="ROOT", nargs="?", const=".",
                        help="rewrite the example batch scripts under ROOT (default: .)")
    args = parser.parse_args(argv)
    if args.write_examples is None:
        parser.print_help()
        return 2
    for path in write_examples(args.write_examples):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
