"""Batch systems a factory submits workers through: local processes, Slurm, HTCondor, SGE/UGE.

Each :class:`BatchQueue` turns a :class:`WorkerSpec` into a running ``vine_worker`` and can list and
remove what it started. ``local`` runs processes on this machine; the others write a job script and
call the batch system's own commands, so workers need the same Python environment on the compute
nodes (a venv on the shared filesystem).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import FactoryError

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("vine_factory")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUPPORTED_TYPES = ("local", "slurm", "condor", "sge", "uge", "dryrun")
REMOVE_GRACE = 5.0  # seconds a worker gets to exit after SIGTERM before SIGKILL


@dataclass
class WorkerSpec:
    """How to run one worker: argv (binary first) and extra environment."""

    argv: list[str]
    env: dict[str, str]


class BatchQueue:
    """Where workers run. ``submit`` returns a job id; ``reap`` forgets finished jobs; ``remove_all`` ends ours."""

    local = False

    def __init__(self, scratch: str, batch_options: str = "") -> None:
        self.scratch = scratch
        self.batch_options = batch_options
        self.jobs: dict[str, Any] = {}
        self._seq = 0

    def _next_name(self) -> str:
        self._seq += 1
        return f"worker-{os.getpid()}-{self._seq}"

    def __len__(self) -> int:
        return len(self.jobs)

    def submit(self, spec: WorkerSpec, settings: Settings) -> str:
        raise NotImplementedError

    def reap(self) -> None:
        raise NotImplementedError

    def remove_all(self) -> None:
        self.remove(list(self.jobs))

    def remove(self, ids: list[str]) -> None:
        """End these jobs of ours (a scale-down), and forget them."""
        raise NotImplementedError

    def batch_ids(self) -> dict[str, str]:
        """Our live jobs by the id their workers report (``batch_job_id``) -> the key in ``jobs``."""
        return {jid: jid for jid in self.jobs}


@dataclass
class LocalJob:
    proc: subprocess.Popen[bytes]
    workdir: str
    stderr_path: str
    name: str = ""


class LocalQueue(BatchQueue):
    """Workers as child processes of the factory, each with its own workspace under the scratch dir."""

    local = True

    def __init__(self, scratch: str, batch_options: str = "", debug: bool = False) -> None:
        super().__init__(scratch, batch_options)
        self.debug = debug

    def submit(self, spec: WorkerSpec, settings: Settings) -> str:
        name = self._next_name()
        workdir = os.path.join(self.scratch, name)
        argv = [*spec.argv, "--workdir", workdir]
        if self.debug:
            argv = [*argv, "--debug", "all", "--debug-file", workdir + ".log"]
        stderr_path = workdir + ".stderr"
        env = {**os.environ, **spec.env, "VINE_BATCH_JOB_ID": name}
        with open(stderr_path, "wb") as err:
            # A session of its own: a terminal's Ctrl-C reaches the factory, which removes workers in order.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    env=env, start_new_session=True, close_fds=True)
        self.jobs[str(proc.pid)] = LocalJob(proc, workdir, stderr_path, name)
        log.info("started local worker pid %s in %s", proc.pid, workdir)
        return str(proc.pid)

    def reap(self) -> None:
        for jid, job in list(self.jobs.items()):
            rc = job.proc.poll()
            if rc is None:
                continue
            del self.jobs[jid]
            if rc != 0:
                log.warning("worker pid %s exited with status %s: %s", jid, rc, file_tail(job.stderr_path))
            else:
                log.info("worker pid %s exited", jid)
            self._clean(job)

    def batch_ids(self) -> dict[str, str]:
        return {job.name: jid for jid, job in self.jobs.items()}

    def remove(self, ids: list[str]) -> None:
        jobs = [self.jobs.pop(i) for i in ids if i in self.jobs]
        for job in jobs:
            _signal(job.proc, signal.SIGTERM)
        deadline = time.monotonic() + REMOVE_GRACE
        for job in jobs:
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %s ignored SIGTERM; killing it", job.proc.pid)
                _signal(job.proc, signal.SIGKILL)
                job.proc.wait()
            self._clean(job)

    @staticmethod
    def _clean(job: LocalJob) -> None:
        shutil.rmtree(job.workdir, ignore_errors=True)
        try:
            os.unlink(job.stderr_path)
        except OSError:
            pass


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def file_tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode(errors="replace").strip() or "(no output)"
    except OSError:
        return "(no output)"


class DryRunQueue(BatchQueue):
    """Logs what it would submit; its jobs 'run' until removed. For trying a configuration."""

    def submit(self, spec: WorkerSpec, settings: Settings) -> str:
        name = self._next_name()
        self.jobs[name] = spec
        print(f"vine_factory: would submit: {shlex.join(spec.argv)}", flush=True)
        return name

    def reap(self) -> None:
        pass

    def remove(self, ids: list[str]) -> None:
        for i in ids:
            if self.jobs.pop(i, None) is not None:
                print(f"vine_factory: would remove {i}", flush=True)


class ExternalQueue(BatchQueue):
    """A batch system driven by its commands: write a script, submit it, list our jobs, remove them."""

    kind = "external"

    def _command(self, argv: list[str], what: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FactoryError(f"{what}: cannot run {argv[0]}: {exc}; is the {self.kind} client installed and on PATH?") from exc
        if out.returncode != 0:
            raise FactoryError(f"{what}: {shlex.join(argv)} exited with {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def _script(self, name: str, spec: WorkerSpec) -> str:
        path = os.path.join(self.scratch, name + ".sh")
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in spec.env.items())
        with open(path, "w") as fh:
            fh.write(f"#!/bin/sh\n{exports}exec {shlex.join(spec.argv)}\n")
        os.chmod(path, 0o755)
        return path

    def submit(self, spec: WorkerSpec, settings: Settings) -> str:
        name = self._next_name()
        script = self._script(name, spec)
        jid = self.parse_id(self._command(self.submit_argv(name, script, settings), "submit"))
        self.jobs[jid] = script
        log.info("submitted %s job %s (%s)", self.kind, jid, script)
        return jid

    def reap(self) -> None:
        if not self.jobs:
            return
        try:
            alive = self.list_jobs()
        except FactoryError as exc:
            log.warning("cannot list jobs, assuming they still run: %s", exc)
            return
        for jid in [j for j in self.jobs if j not in alive]:
            log.info("%s job %s finished", self.kind, jid)
            self._forget(self.jobs.pop(jid))

    def remove(self, ids: list[str]) -> None:
        ids = sorted(i for i in ids if i in self.jobs)
        if not ids:
            return
        try:
            self._command(self.remove_argv(ids), "remove")
        except FactoryError as exc:
            log.error("%s", exc)
        for jid in ids:
            log.info("removed %s job %s", self.kind, jid)
            self._forget(self.jobs.pop(jid))

    @staticmethod
    def _forget(script: str) -> None:
        unlink_quietly(script)
        unlink_quietly(script[: -len(".sh")] + ".submit")  # condor's submit description, if any

    # the batch-system-specific parts
    def submit_argv(self, name: str, script: str, settings: Settings) -> list[str]:
        raise NotImplementedError

    def parse_id(self, stdout: str) -> str:
        raise NotImplementedError

    def list_jobs(self) -> set[str]:
        raise NotImplementedError

    def remove_argv(self, ids: list[str]) -> list[str]:
        raise NotImplementedError


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class SlurmQueue(ExternalQueue):
    kind = "slurm"

    def submit_argv(self, name: str, script: str, settings: Settings) -> list[str]:
        argv = ["sbatch", "--parsable", "--job-name", "vine_worker", "--output", "/dev/null", "--error", "/dev/null", "--nodes", "1"]
        if settings.cores and not settings.autosize:
            argv += ["--cpus-per-task", str(math.ceil(settings.cores))]
        if settings.memory and not settings.autosize:
            argv += [f"--mem={math.ceil(settings.memory)}M"]
        return [*argv, *shlex.split(self.batch_options), script]  # -B last: the user's options win

    def parse_id(self, stdout: str) -> str:
        m = re.search(r"^\s*(\d+)", stdout) or re.search(r"Submitted batch job (\d+)", stdout)
        if m is None:
            raise FactoryError(f"cannot find a job id in sbatch's output: {stdout.strip()!r}")
        return m.group(1)

    def list_jobs(self) -> set[str]:
        out = self._command(["squeue", "--noheader", "--format=%i", "--user", _username()], "list")
        return {line.strip() for line in out.splitlines() if line.strip()}

    def remove_argv(self, ids: list[str]) -> list[str]:
        return ["scancel", *ids]


class CondorQueue(ExternalQueue):
    kind = "condor"

    def __init__(self, scratch: str, batch_options: str = "", wrapper_inputs: tuple[str, ...] = ()) -> None:
        super().__init__(scratch, batch_options)
        self.wrapper_inputs = wrapper_inputs

    def submit_argv(self, name: str, script: str, settings: Settings) -> list[str]:
        lines = ["universe = vanilla", f"executable = {script}", "output = /dev/null", "error = /dev/null",
                 f"log = {os.path.join(self.scratch, 'condor.log')}", "should_transfer_files = if_needed",
                 "when_to_transfer_output = on_exit", "getenv = true", 'environment = "VINE_BATCH_JOB_ID=$(Cluster)"']
        if self.wrapper_inputs:
            lines.append("transfer_input_files = " + ",".join(self.wrapper_inputs))
        if not settings.autosize:
            if settings.cores:
                lines.append(f"request_cpus = {math.ceil(settings.cores)}")
            if settings.memory:
                lines.append(f"request_memory = {math.ceil(settings.memory)}")
            if settings.disk:
                lines.append(f"request_disk = {math.ceil(settings.disk) * 1024}")
            if settings.gpus:
                lines.append(f"request_gpus = {math.ceil(settings.gpus)}")
        reqs = [f"({r})" for r in settings.condor_requirements]
        reqs += [f'(Machine != "{h}")' for h in settings.workers_blocked]
        if reqs:
            lines.append("requirements = " + " && ".join(reqs))
        if self.batch_options:
            lines.append(self.batch_options)
        lines.append("queue 1")
        path = os.path.join(self.scratch, name + ".submit")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return ["condor_submit", path]

    def parse_id(self, stdout: str) -> str:
        m = re.search(r"submitted to cluster (\d+)", stdout)
        if m is None:
            raise FactoryError(f"cannot find a cluster id in condor_submit's output: {stdout.strip()!r}")
        return m.group(1)

    def list_jobs(self) -> set[str]:
        out = self._command(["condor_q", "-af", "ClusterId"], "list")
        return {line.strip() for line in out.splitlines() if line.strip()}

    def remove_argv(self, ids: list[str]) -> list[str]:
        return ["condor_rm", *ids]


class SgeQueue(ExternalQueue):
    kind = "sge"

    def submit_argv(self, name: str, script: str, settings: Settings) -> list[str]:
        return ["qsub", "-terse", "-N", "vine_worker", "-o", "/dev/null", "-e", "/dev/null", "-S", "/bin/sh",
                *shlex.split(self.batch_options), script]

    def parse_id(self, stdout: str) -> str:
        m = re.search(r"^\s*(\d+)", stdout) or re.search(r"Your job (\d+)", stdout)
        if m is None:
            raise FactoryError(f"cannot find a job id in qsub's output: {stdout.strip()!r}")
        return m.group(1)

    def list_jobs(self) -> set[str]:
        out = self._command(["qstat", "-u", _username()], "list")
        return {line.split()[0] for line in out.splitlines() if line.split() and line.split()[0].isdigit()}

    def remove_argv(self, ids: list[str]) -> list[str]:
        return ["qdel", *ids]


def _username() -> str:
    import getpass

    return getpass.getuser()


def make_queue(batch_type: str, scratch: str, args: argparse.Namespace) -> BatchQueue:
    if batch_type == "local":
        return LocalQueue(scratch, args.batch_options or "", debug=bool(args.debug))
    if batch_type == "slurm":
        return SlurmQueue(scratch, args.batch_options or "")
    if batch_type == "condor":
        return CondorQueue(scratch, args.batch_options or "", tuple(args.wrapper_input or ()))
    if batch_type in ("sge", "uge"):
        return SgeQueue(scratch, args.batch_options or "")
    if batch_type == "dryrun":
        return DryRunQueue(scratch, args.batch_options or "")
    raise FactoryError(f"batch type {batch_type!r} is not supported here; use one of {', '.join(SUPPORTED_TYPES)}")
