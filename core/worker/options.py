"""``vine_worker``'s command line and what it detects of its host: options, resources, batch job id."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess

import psutil


def detect_resources(workdir: str, disk_percent: float = 50) -> dict[str, float]:
    """Cores, memory (MB), disk (MB of the workspace's free space × disk_percent) and GPUs of this host."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (psutil.cpu_count() or 1)
    memory = psutil.virtual_memory().total // (1 << 20)
    os.makedirs(workdir, exist_ok=True)
    disk = psutil.disk_usage(workdir).free // (1 << 20) * disk_percent / 100
    gpus = 0
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
            gpus = sum(1 for line in out.splitlines() if line.startswith("GPU"))
        except (OSError, subprocess.SubprocessError):
            gpus = 0
    return {"cores": float(cores), "memory": float(memory), "disk": float(int(disk)), "gpus": float(gpus)}


def batch_job_id() -> str | None:
    """The batch job this worker runs in, so a factory can remove exactly its idle workers' jobs.

    ``$VINE_BATCH_JOB_ID`` (set by the factory's local and HTCondor queues), else the id the batch
    system itself exports: ``$SLURM_JOB_ID`` (Slurm), ``$JOB_ID`` (SGE/UGE).
    """
    for var in ("VINE_BATCH_JOB_ID", "SLURM_JOB_ID", "JOB_ID"):
        v = os.environ.get(var, "").strip()
        if v and len(v) <= 128:
            return v
    return None


def _amount(text: str) -> float:
    """An argparse type: a finite number >= 0 (``inf``/``nan`` parse as floats but no scheduler can use them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vine_worker", description="Run tasks for a core (TaskVine-compatible) manager.")
    p.add_argument("manager", nargs="*", help="HOST PORT, or 'HOST:PORT[;HOST:PORT...]'")
    p.add_argument("-M", "--manager-name", help="project name to look up in the catalog")
    p.add_argument("--cores", type=_amount)
    p.add_argument("--memory", type=_amount, help="MB")
    p.add_argument("--disk", type=_amount, help="MB")
    p.add_argument("--gpus", type=_amount)
    p.add_argument("--disk-percent", type=_amount, default=50)
    p.add_argument("--feature", action="append", help="a feature tasks may require (repeatable)")
    p.add_argument("-t", "--timeout", type=_amount, default=900, help="idle and connect timeout (s)")
    p.add_argument("--idle-timeout", type=_amount)
    p.add_argument("--connect-timeout", type=_amount)
    p.add_argument("--wall-time", type=_amount, default=0)
    p.add_argument("--single-shot", action="store_true")
    p.add_argument("-s", "--workdir", "--workspace", dest="workdir")
    p.add_argument("--keep-workspace", action="store_true")
    p.add_argument("-P", "--password", help="file holding the shared password")
    p.add_argument("--transfer-port", type=int, default=0)
    p.add_argument("--ssl", action="store_true",
                   help="connect to the manager with TLS, and serve and fetch peer transfers with TLS "
                        "(with -M NAME, learned from the catalog)")
    p.add_argument("--spawn-threads", type=_count, default=None, metavar="N",
                   help="threads that start command tasks' shells (0: from the worker's own loop). Default: up to 4 for a worker of 2+ cores on a machine of 4 or more, else 0 (a small machine, where the threads cost more than their spawns overlap)")
    p.add_argument("--cpu-scheduling", choices=("batch", "normal"), default="batch",
                   help="the Linux CPU scheduling policy of the worker and everything it starts: 'batch' "
                        "(SCHED_BATCH, the default: a process woken by a message does not preempt the one that sent it) "
                        "or 'normal' (the policy it was started with)")
    p.add_argument("--parent-death", action="store_true")
    p.add_argument("--from-factory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-d", "--debug", help="debug flags ('all')")
    p.add_argument("-o", "--debug-file")
    p.add_argument("-C", "--catalog", help="catalog directory or host:port")
    return p


def spawn_threads(requested: int | None, cores: float) -> int:
    """How many spawner threads a worker of ``cores`` runs (``--spawn-threads``, or the default).

    The threads let two shells' spawns overlap with each other and with the worker's loop (they
    spawn with ``GlibcSpawn``, which lets the GIL go), which pays where cores are free for it; on a
    machine of 2 or 3 cores the manager, the worker and the tasks already share every core, and
    the threads gain nothing (``vine_benchmark std`` on 2 cores: 0.55-0.59 of the floor with 0, 1
    or 2 threads, session 35; about 7 % fewer tasks/s with them before, when ``os.posix_spawn``
    kept the GIL through each spawn).
    """
    if requested is not None:
        if requested < 0:
            raise ValueError(f"--spawn-threads must be >= 0, not {requested}")
        return requested
    machine = os.cpu_count() or 1
    return min(4, int(cores)) if machine >= 4 and cores >= 2 else 0


def set_cpu_scheduling(policy: str) -> str | None:
    """Put the calling thread, and so every thread and process it starts after this, under
    ``policy`` ("batch": Linux ``SCHED_BATCH``; "normal": left as it is). A warning to print, or None.

    Under ``SCHED_BATCH`` a process woken up does not preempt the one running on that core: a
    worker that writes a call to a library and then its neighbour's result to the manager is no
    longer stopped between the two by the library it woke, and the library forks its next child
    before the worker's next message takes its core. The policy is meant for non-interactive
    CPU-bound work, which is what a worker and its tasks are; it changes nothing about priority
    (``nice`` stays as it was) and needs no privilege. ``vine_benchmark funcall-fork``, session 35:
    +9 % calls/s (see README, "Where a task's time goes").
    """
    if policy != "batch":
        return None
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        return None  # not Linux: the platform's default policy it is
    try:
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError as exc:
        return f"could not set SCHED_BATCH ({exc.strerror or exc}); running under the default policy"
    return None
