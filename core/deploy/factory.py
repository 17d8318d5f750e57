"""``vine_factory`` and :class:`Factory`: keep a pool of workers sized to what managers need.

::

    Factory (Python, in the user's program)           vine_factory (one process)
    ───────────────────────────────────────           ──────────────────────────
    f.max_workers = 8 ──► config.json ──(mtime)──►  every period, or soon after a config change:
    start() ──spawn ──► vine_factory --parent-death    1. re-read config.json (invalid → keep old)
            ◄── "ready" on a pipe (or it died: raise)  2. reap exited workers
    stop()  ──SIGTERM──► remove every worker, exit     3. ask each manager: waiting, running, workers
                                                       4. need = workers_needed(...) clamped to [min, max]
                                                       5. submit workers_to_submit(...) through a BatchQueue
                                                             │ local: `python -m core.worker … --parent-death`
                                                             │ slurm: sbatch / squeue / scancel
                                                             │ condor: condor_submit / condor_q / condor_rm
                                                             └ sge:   qsub / qstat / qdel

The planning (steps 4–5) is two pure functions, unit-tested without processes. The factory never
kills workers to shrink the pool (idle workers leave on their own after ``--timeout``); SIGTERM,
SIGINT, the death of its parent (``--parent-death``) or ``--factory-timeout`` remove them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import logging.handlers
import math
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ..errors import FactoryError
from .batch import REMOVE_GRACE, SUPPORTED_TYPES, BatchQueue, WorkerSpec, file_tail, make_queue, unlink_quietly
from .settings import Settings

log = logging.getLogger("vine_factory")

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KNOWN_TYPES = SUPPORTED_TYPES + ("vine", "wq", "pbs", "lsf", "torque", "moab", "amazon", "k8s")
CONFIG_DEBOUNCE = 0.2  # Python sets attributes in bursts; plan once they have all landed


class FactoryStartError(FactoryError, RuntimeError):
    """``Factory.start()`` could not launch ``vine_factory`` (it exited at once; its output says why)."""


# --- planning (pure) ---------------------------------------------------------------------------------------


def workers_needed(managers: list[dict[str, Any]], settings: Settings) -> int:
    """Workers wanted for these managers' status replies (REFERENCE §2.2 step 1), in [min, max].

    Each manager wants one worker per waiting, left or running task (÷ tasks-per-worker, rounded
    up), at least enough to hold its tasks' declared resources when the worker size is fixed
    (``tasks_total_<r>`` in the reply), at most ``capacity`` when set.
    """
    total = 0
    for m in managers:
        tasks = int(m.get("tasks_waiting", 0)) + int(m.get("tasks_left", 0)) + int(m.get("tasks_running", 0))
        need = math.ceil(tasks / settings.tasks_per_worker) if settings.tasks_per_worker > 0 else tasks
        for r in ("cores", "memory", "disk", "gpus"):
            size = getattr(settings, r)
            requested = float(m.get(f"tasks_total_{r}", 0) or 0)
            if size and size > 0 and requested > 0:
                need = max(need, math.ceil(requested / size))
        if settings.capacity > 0:
            need = min(need, settings.capacity)
        total += need
    return max(settings.min_workers, min(total, settings.max_workers))


def workers_to_submit(need: int, submitted: int, connected: int, per_cycle: int) -> int:
    """New workers to submit this cycle (REFERENCE §2.2 step 2).

    ``submitted``: our live jobs; ``connected``: workers the managers report. Workers beyond ours
    came from elsewhere and count towards the need; ours not yet connected count against the
    per-cycle cap so a slow batch system is not flooded.
    """
    elsewhere = max(0, connected - submitted)
    not_connected = max(0, submitted - connected)
    new = need - submitted - elsewhere
    if per_cycle > 0:
        new = min(new, per_cycle - not_connected)
    return max(0, new)


# --- batch queues live in core/deploy/batch.py -----------------------------------------------

# --- the factory loop -------------------------------------------------------------------------------------


class FactoryRunner:
    """The ``vine_factory`` process: plans each cycle and drives a :class:`BatchQueue`."""

    def __init__(self, args: argparse.Namespace, settings: Settings, queue: BatchQueue) -> None:
        self.args = args
        self.settings = settings
        self.queue = queue
        self.stop = threading.Event()
        self.password = read_password_file(args.password)
        self.parent = os.getppid()
        self._config_stamp = _stamp(args.config_file)
        self._config_changed: float | None = None
        self.last_reached = time.monotonic()
        self._removable_before: set[str] = set()
        self._uses_tls: dict[tuple[str, int], bool] = {}  # from the catalog's "ssl" field (with -M NAME)

    # configuration
    def reload_config(self) -> None:
        path = self.args.config_file
        stamp = _stamp(path)
        if not path or stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            with open(path) as fh:
                new = self.settings.with_json(json.load(fh))
        except (OSError, ValueError) as exc:
            log.error("config %s is invalid, keeping the previous settings: %s", path, exc)
            return
        if new != self.settings:
            log.info("config %s: %s", path, {k: v for k, v in dataclasses.asdict(new).items() if v != getattr(self.settings, k)})
        self.settings = new

    # managers
    def targets(self) -> list[tuple[str, int]]:
        if self.args.host is not None:
            return [(self.args.host, self.args.port)]
        from .catalog import find

        name = self.settings.manager_name or self.args.manager_name
        found = find(name, self.args.catalog)
        self._uses_tls = {(str(e["address"]), int(e["port"])): bool(e.get("ssl")) for e in found}
        return list(self._uses_tls)

    def uses_tls(self, host: str, port: int) -> bool:
        """TLS to this manager: ``--ssl``, or its catalog entry says so (then workers learn it too)."""
        return bool(self.args.ssl) or self._uses_tls.get((host, port), False)

    def query_managers(self) -> list[dict[str, Any]] | None:
        from ..wire.status_client import query_status

        replies = []
        for host, port in self.targets():
            try:
                data = query_status(host, port, "manager", self.password, self.uses_tls(host, port), timeout=5)
            except Exception as exc:  # noqa: BLE001 - refused, timed out or rejected: this manager is unreachable
                log.info("manager %s:%s unreachable: %s: %s", host, port, type(exc).__name__, exc)
                continue
            replies.extend(d for d in data if isinstance(d, dict))
        return replies or None

    # workers
    def worker_spec(self) -> WorkerSpec:
        s, a = self.settings, self.args
        argv = shlex.split(a.worker_binary) if a.worker_binary else [sys.executable, "-m", "core.worker"]
        for w in reversed(a.wrapper or []):
            argv = [*shlex.split(w), *argv]
        argv += ["--timeout", _num(s.timeout), "--from-factory"]
        if self.queue.local:
            argv.append("--parent-death")
        if not s.autosize:
            for r in ("cores", "memory", "disk", "gpus"):
                v = getattr(s, r)
                if v is not None:
                    argv += [f"--{r}", _num(v)]
        if a.password:
            argv += ["--password", os.path.abspath(a.password)]
        if a.catalog:
            argv += ["--catalog", a.catalog]
        if s.transfer_port:
            argv += ["--transfer-port", s.transfer_port]
        for feat in a.feature or []:
            argv += ["--feature", feat]
        if a.ssl:
            argv.append("--ssl")
        if a.single_shot:
            argv.append("--single-shot")
        argv += shlex.split(a.extra_options or "") + shlex.split(s.worker_extra_options or "")
        if a.host is not None:
            argv += [a.host, str(a.port)]
        else:
            argv += ["--manager-name", s.manager_name or a.manager_name]
        env = dict(kv.split("=", 1) for kv in (a.env or []))
        if not a.worker_binary:
            env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
        return WorkerSpec(argv, env)

    def cycle(self) -> None:
        self.reload_config()
        self.queue.reap()
        replies = self.query_managers()
        now = time.monotonic()
        if replies is None:
            ft = self.settings.factory_timeout
            if ft > 0 and now - self.last_reached > ft:
                log.warning("no manager reachable for %ss (--factory-timeout); exiting", ft)
                print(f"vine_factory: no manager reachable for {ft:g}s; exiting", file=sys.stderr, flush=True)
                self.stop.set()
            return
        self.last_reached = now
        need = workers_needed(replies, self.settings)
        connected = sum(int(r.get("workers", 0)) for r in replies)
        new = workers_to_submit(need, len(self.queue), connected, self.settings.workers_per_cycle)
        log.debug("need %d, submitted %d, connected %d: submitting %d", need, len(self.queue), connected, new)
        if len(self.queue) > need:
            self.scale_down(len(self.queue) - need)
        else:
            self._removable_before = set()
        for _ in range(new):
            if self.stop.is_set():
                break
            try:
                self.queue.submit(self.worker_spec(), self.settings)
            except (FactoryError, OSError) as exc:
                log.error("cannot submit a worker: %s", exc)
                break

    def scale_down(self, excess: int) -> None:
        """Remove up to ``excess`` of our jobs whose workers have nothing to do.

        A job is removable when its worker is connected with no task, or (when every connected
        worker says which batch job it runs in) when it has no connected worker yet (still queued,
        or starting). It is removed only if it was removable at the previous cycle too, so a worker
        that just connected gets its first tasks before it can be judged idle. Busy workers are never
        removed; they leave on their own ``--timeout`` once idle.
        """
        from ..wire.status_client import query_status

        ours = self.queue.batch_ids()
        idle: list[str] = []
        seen: set[str] = set()
        unlabelled = 0
        for host, port in self.targets():
            try:
                rows = query_status(host, port, "workers", self.password, self.uses_tls(host, port), timeout=5)
            except Exception as exc:  # noqa: BLE001 - cannot see the workers: remove nothing this cycle
                log.info("manager %s:%s: cannot list workers (%s); not scaling down", host, port, exc)
                self._removable_before = set()
                return
            for w in rows if isinstance(rows, list) else []:
                if not isinstance(w, dict):
                    continue
                bid = w.get("batch_job_id")
                key = ours.get(bid) if isinstance(bid, str) else None
                if key is None:
                    unlabelled += not bid
                    continue
                seen.add(key)
                if not w.get("tasks_running"):
                    idle.append(key)
        unconnected = [k for k in ours.values() if k not in seen] if unlabelled == 0 else []
        removable = unconnected + sorted(idle)
        chosen = [k for k in removable if k in self._removable_before][:excess]
        self._removable_before = set(removable) - set(chosen)
        if chosen:
            log.info("scaling down: removing %d idle or unstarted job(s): %s", len(chosen), " ".join(chosen))
            self.queue.remove(chosen)

    def pause(self, seconds: float, react_to_config: bool = True) -> None:
        """Sleep until the next cycle: ``seconds``, or a little after config.json changes, or until told to stop."""
        deadline = time.monotonic() + seconds
        self._config_changed = None
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.stop.wait(0.1)
            if self.args.parent_death and os.getppid() != self.parent:
                log.warning("parent process died; exiting")
                self.stop.set()
            if react_to_config and self.args.config_file:
                stamp = _stamp(self.args.config_file)
                if stamp != self._config_stamp:
                    if self._config_changed is None:
                        self._config_changed = time.monotonic()
                    elif time.monotonic() - self._config_changed >= CONFIG_DEBOUNCE:
                        self._config_changed = None
                        return

    def run(self, ready_fd: int | None = None) -> int:
        def on_signal(signum: int, _frame: Any) -> None:
            log.info("signal %s: removing workers and exiting", signum)
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"ready\n")
                os.close(ready_fd)
            except OSError:
                pass
        try:
            if self.args.start_delay > 0:
                self.pause(self.args.start_delay, react_to_config=False)
            while not self.stop.is_set():
                self.cycle()
                if not self.stop.is_set():
                    self.pause(self.settings.factory_period)
        finally:
            log.info("removing %d worker(s)", len(self.queue))
            self.queue.remove_all()
        return 0


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def read_password_file(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read().strip()


# --- command line ---------------------------------------------------------------------------------------

UNSUPPORTED_OPTIONS = ("amazon_config", "k8s_image", "k8s_worker_image", "mesos_master", "mesos_path", "mesos_preload",
                       "python_env", "python_package", "run_factory_as_manager", "runos", "foremen_name", "tls_sni")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vine_factory",
        description="Keep workers running for a manager: HOST PORT, HOST:PORT, or -M NAME (catalog).",
    )
    p.add_argument("target", nargs="*", help="HOST PORT or HOST:PORT")
    p.add_argument("-T", "--batch-type", default="local", help=f"one of {', '.join(SUPPORTED_TYPES)}")
    p.add_argument("-M", "--manager-name", help="project name (regex) to look up in the catalog")
    p.add_argument("-w", "--min-workers", type=int)
    p.add_argument("-W", "--max-workers", type=int)
    p.add_argument("--workers-per-cycle", type=int, help="cap on workers submitted but not yet connected (5)")
    p.add_argument("--factory-period", type=float, help="seconds between cycles (30; local 5)")
    p.add_argument("-t", "--timeout", type=float, help="worker idle timeout in seconds (300)")
    p.add_argument("--factory-timeout", type=float, help="exit when no manager is reachable for this long (0 = never)")
    p.add_argument("--tasks-per-worker", type=int)
    p.add_argument("-c", "--capacity", type=int, help="never more than this many workers per manager")
    p.add_argument("--cores", type=float)
    p.add_argument("--memory", type=float, help="MB")
    p.add_argument("--disk", type=float, help="MB")
    p.add_argument("--gpus", type=float)
    p.add_argument("--autosize", action="store_true", default=None, help="let workers use what their host has")
    p.add_argument("-E", "--extra-options", help="more vine_worker options")
    p.add_argument("--env", action="append", help="VAR=VALUE for workers (repeatable)")
    p.add_argument("--feature", action="append", help="worker feature (repeatable)")
    p.add_argument("--transfer-port", help="workers' transfer port (or LO:HI)")
    p.add_argument("--worker-binary", help="command that runs a worker (default: this Python's core.worker)")
    p.add_argument("--wrapper", action="append", help="command to wrap the worker in (repeatable)")
    p.add_argument("--wrapper-input", action="append", help="file the wrapper needs (condor transfers it)")
    p.add_argument("-B", "--batch-options", help="options for the batch system's submit command")
    p.add_argument("--condor-requirements", action="append", help="condor requirement (repeatable, ANDed)")
    p.add_argument("-S", "--scratch-dir", help="scratch directory (default /tmp/vine-factory-<uid>)")
    p.add_argument("-C", "--config-file", help="JSON configuration, re-read whenever it changes")
    p.add_argument("-P", "--password", help="file holding the manager's password")
    p.add_argument("--catalog", help="catalog directory or HOST:PORT of a vine_catalog_server (default $VINE_CATALOG)")
    p.add_argument("--ssl", action="store_true", help="the manager uses TLS (with -M NAME, learned from the catalog)")
    p.add_argument("--parent-death", action="store_true", help="exit (removing workers) when the parent process dies")
    p.add_argument("--single-shot", action="store_true", help="workers exit after their first manager")
    p.add_argument("--factory-name")
    p.add_argument("-d", "--debug", help="debug flags ('all')")
    p.add_argument("-o", "--debug-file", help="debug log file (default stderr)")
    p.add_argument("--debug-file-size", type=float, help="rotate the debug file at this many MB")
    p.add_argument("--start-delay", type=float, default=0, help="seconds to wait before the first cycle")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    for opt in UNSUPPORTED_OPTIONS:
        p.add_argument("--" + opt.replace("_", "-"), help=argparse.SUPPRESS)
    return p


CLI_SETTINGS = ("min_workers", "max_workers", "workers_per_cycle", "capacity", "timeout", "cores", "memory", "disk",
                "gpus", "autosize", "factory_timeout", "tasks_per_worker", "factory_name", "manager_name",
                "transfer_port", "condor_requirements", "factory_period")


def settings_from_args(args: argparse.Namespace) -> Settings:
    values: dict[str, Any] = {}
    for name in CLI_SETTINGS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    base = Settings(factory_period=5 if args.batch_type == "local" else 30)
    settings = base.with_json(values)
    if args.config_file:
        with open(args.config_file) as fh:
            settings = settings.with_json(json.load(fh))
    return settings


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING
    fmt = logging.Formatter("%(asctime)s vine_factory[%(process)d] %(levelname)s: %(message)s")
    handler: logging.Handler
    if args.debug_file:
        if args.debug_file_size:
            handler = logging.handlers.RotatingFileHandler(args.debug_file, maxBytes=int(args.debug_file_size * 1e6), backupCount=1)
        else:
            handler = logging.FileHandler(args.debug_file)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(fmt)
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    if args.batch_type not in SUPPORTED_TYPES:
        known = "known to TaskVine but not implemented here" if args.batch_type in KNOWN_TYPES else "unknown"
        parser.error(f"batch type {args.batch_type!r} is {known}; use one of {', '.join(SUPPORTED_TYPES)}")
    args.host, args.port = None, None
    try:
        if len(args.target) == 2:
            args.host, args.port = args.target[0], int(args.target[1])
        elif len(args.target) == 1 and ":" in args.target[0]:
            host, _, port = args.target[0].rpartition(":")
            args.host, args.port = host, int(port)
        elif args.target or not args.manager_name:
            raise ValueError
    except ValueError:
        parser.error("give the manager as HOST PORT, HOST:PORT, or -M NAME")
    for opt in UNSUPPORTED_OPTIONS:
        if getattr(args, opt) is not None:
            log.warning("--%s is not supported by this factory; ignoring it", opt.replace("_", "-"))
    try:
        settings = settings_from_args(args)
        if args.password:
            read_password_file(args.password)
    except (OSError, ValueError) as exc:
        print(f"vine_factory: {exc}", file=sys.stderr)
        return 1
    scratch = os.path.abspath(args.scratch_dir or os.path.join(tempfile.gettempdir(), f"vine-factory-{os.getuid()}"))
    os.makedirs(scratch, exist_ok=True)
    try:
        queue = make_queue(args.batch_type, scratch, args)
    except FactoryError as exc:
        print(f"vine_factory: {exc}", file=sys.stderr)
        return 1
    runner = FactoryRunner(args, settings, queue)
    return runner.run(args.ready_fd)


# --- Python API -----------------------------------------------------------------------------------------

# Every Factory attribute (``_`` for ``-``), REFERENCE §1.8, plus ``factory-period``.
OPTIONS = (
    "amazon-config autosize batch-options batch-type capacity catalog condor-requirements config-file cores debug "
    "debug-file debug-file-size disk env extra-options factory-timeout foremen-name gpus k8s-image k8s-worker-image "
    "max-workers manager-name memory mesos-master mesos-path mesos-preload min-workers password python-env "
    "python-package run-factory-as-manager runos scratch-dir ssl tasks-per-worker timeout worker-binary "
    "workers-per-cycle wrapper wrapper-input factory-period"
).split()
# Changeable while the factory runs: written to its config file, which it re-reads.
CONFIG_OPTIONS = (
    "autosize capacity cores disk factory-timeout foremen-name manager-name max-workers memory min-workers "
    "tasks-per-worker timeout workers-per-cycle condor-requirements factory-period"
).split()
DEFAULTS = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(Settings)}
# Handled by Factory itself rather than passed to vine_factory as --option.
_NOT_FLAGS = {"batch-type", "manager-name", "config-file", "worker-binary"}


def _find_exe(name: str) -> list[str]:
    if os.path.sep in name and os.access(name, os.X_OK):
        return [os.path.abspath(name)]
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"cannot find the executable {name!r}; give a full path, or leave it unset to use this Python")
    return [found]


class Factory:
    """Start and steer a ``vine_factory`` from Python (REFERENCE §1.8).

    ``Factory("local", manager=m)`` keeps workers connected to ``m``; options are attributes
    (``f.max_workers = 4``), and those listed in :data:`CONFIG_OPTIONS` may change while it runs.
    Use it as a context manager, or call :meth:`start` and :meth:`stop`; stopping removes every
    worker it started.
    """

    def __init__(self, batch_type: str = "local", manager: Any = None, manager_host_port: str | None = None,
                 manager_name: str | None = None, factory_binary: str | None = None, worker_binary: str | None = None,
                 log_file: str = os.devnull) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = log_file
        self._env: dict[str, str] = {}
        self._opts: dict[str, Any] = {}
        self._host: str | None = None
        self._port: int | None = None
        self._written_password: str | None = None
        self._manager_dir: str | None = None
        self._output: Any = None
        if batch_type not in KNOWN_TYPES:
            raise ValueError(f"unknown batch type {batch_type!r}; use one of {', '.join(SUPPORTED_TYPES)}")
        self._opts["batch-type"] = batch_type
        self._factory_cmd = _find_exe(factory_binary) if factory_binary else [sys.executable, "-m", "core.deploy.factory"]
        if worker_binary:
            self._opts["worker-binary"] = shlex.join(_find_exe(worker_binary))
        self._set_target(batch_type, manager, manager_host_port, manager_name)
        if manager is not None:
            self._manager_dir = getattr(manager, "runtime_directory", None)
            password = getattr(manager, "_password", None)
            if password:
                self._manager_password = bytes(password)
            if batch_type == "local":
                self._opts["factory-period"] = 1  # a local pool for this program: react within a second

    def _set_target(self, batch_type: str, manager: Any, host_port: str | None, name: str | None) -> None:
        if manager is None and not host_port and not name:
            raise ValueError("give the factory a target: manager=, manager_host_port='HOST:PORT' or manager_name=")
        if name:
            self._opts["manager-name"] = name
        if manager is not None:
            port = getattr(manager, "port", None)
            if not isinstance(port, int):
                raise ValueError(f"manager= must be a Manager (with an integer .port), not {manager!r}")
            if batch_type == "local" or not getattr(manager, "name", None):
                self._host, self._port = ("localhost" if batch_type == "local" else socket.getfqdn()), port
            else:
                self._opts.setdefault("manager-name", manager.name)
            if getattr(manager, "using_ssl", False):
                self._opts["ssl"] = True
        if host_port:
            host, sep, port_s = str(host_port).rpartition(":")
            if not sep or not host or not port_s.isdigit():
                raise ValueError(f"manager_host_port must look like HOST:PORT, not {host_port!r}")
            self._host, self._port = host, int(port_s)

    # attributes ----------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = name.replace("_", "-")
        if key not in OPTIONS:
            raise AttributeError(f"Factory has no option {name!r}; options are: {', '.join(o.replace('-', '_') for o in OPTIONS)}")
        if key in self._opts:
            return self._opts[key]
        return DEFAULTS.get(key)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        key = name.replace("_", "-")
        if key not in OPTIONS:
            raise AttributeError(f"Factory has no option {name!r}; options are: {', '.join(o.replace('-', '_') for o in OPTIONS)}")
        if key in ("batch-type", "manager-name"):
            if self._opts.get(key) != value:
                raise AttributeError(f"{name} is fixed when the Factory is created ({self._opts.get(key)!r}); make a new Factory instead")
            return
        running = self._proc is not None and self._proc.poll() is None
        if running and key not in CONFIG_OPTIONS:
            changeable = ", ".join(o.replace("-", "_") for o in CONFIG_OPTIONS if o != "manager-name")
            raise AttributeError(f"{name} cannot change while the factory runs (only {changeable} can); stop() it first")
        if key.replace("-", "_") in {f.name for f in dataclasses.fields(Settings)}:
            Settings().with_json({key: value})  # a bad value is a ValueError here, not a logged error in the factory
        self._opts[key] = value
        if running:
            self._write_config()

    def set_environment(self, env: dict[str, str]) -> None:
        """Extra environment for the factory and its workers (added to this process's environment)."""
        self._env = {str(k): str(v) for k, v in env.items()}

    # lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> Factory:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __del__(self) -> None:
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _scratch(self) -> str:
        if self._opts.get("scratch-dir"):
            path = os.path.abspath(self._opts["scratch-dir"])
            os.makedirs(path, exist_ok=True)
            return path
        base = os.path.join(self._manager_dir, "vine-factory") if self._manager_dir else os.path.join(os.getcwd(), f"vine-factory-{os.getuid()}")
        path, n = base, 1
        while True:  # one scratch dir per Factory, so two factories never share a config file
            try:
                os.makedirs(path)
                return path
            except FileExistsError:
                if not os.path.exists(os.path.join(path, "config.json")):
                    return path
                n += 1
                path = f"{base}.{n}"

    def _config(self) -> dict[str, Any]:
        return {k: v for k, v in self._opts.items() if k in CONFIG_OPTIONS and v is not None}

    def _write_config(self) -> None:
        path = self._opts["config-file"]
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(self._config(), fh, indent=2)
        os.replace(tmp, path)  # the factory never sees a half-written file

    def _command(self, ready_fd: int) -> list[str]:
        args = [*self._factory_cmd, "--parent-death", "--config-file", self._opts["config-file"],
                "--batch-type", self._opts["batch-type"], "--ready-fd", str(ready_fd), "--start-delay", "0.5"]
        if self._opts.get("worker-binary"):
            args.append(f"--worker-binary={self._opts['worker-binary']}")
        for key, value in self._opts.items():
            if key in CONFIG_OPTIONS or key in _NOT_FLAGS or value is None or value is False:
                continue
            if value is True:
                args.append(f"--{key}")
            elif isinstance(value, dict):
                args += [f"--{key}={k}={v}" for k, v in value.items()]
            elif isinstance(value, (list, tuple)):
                args += [f"--{key}={v}" for v in value]
            else:
                args.append(f"--{key}={value}")
        if self._host is not None:
            args += [self._host, str(self._port)]
        else:
            args += ["--manager-name", self._opts["manager-name"]]
        return args

    def start(self) -> Factory:
        """Write the config file and launch ``vine_factory``; raises :class:`FactoryStartError` if it dies at once."""
        if self._proc is not None and self._proc.poll() is None:
            raise FactoryError("this Factory is already running; stop() it first")
        scratch = self._scratch()
        self._opts["scratch-dir"] = scratch
        self._opts.setdefault("config-file", os.path.join(scratch, "config.json"))
        manager_password = getattr(self, "_manager_password", None)
        if manager_password and not self._opts.get("password"):
            path = os.path.join(scratch, "manager.password")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(manager_password)
            self._opts["password"] = path
            self._written_password = path
        self._write_config()
        env = {**os.environ, **self._env}
        env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        quiet = self._log_file in (None, os.devnull)
        self._output = tempfile.TemporaryFile() if quiet else open(self._log_file, "ab")
        read_fd, write_fd = os.pipe()
        try:
            self._proc = subprocess.Popen(self._command(write_fd), stdin=subprocess.DEVNULL, stdout=self._output,
                                          stderr=subprocess.STDOUT, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        try:
            ready = self._await_ready(read_fd, 10.0)
        finally:
            os.close(read_fd)
        if not ready and self._proc.poll() is None:
            # Not ready yet (a very slow host): the process is alive after 1 s, which is all start() promises.
            try:
                self._proc.wait(1)
            except subprocess.TimeoutExpired:
                return self
        if self._proc.poll() is not None:
            status = self._proc.returncode
            self._output.flush()
            output = file_tail(self._log_file) if not quiet else self._read_output()
            self._proc = None
            self._output.close()
            self._output = None
            self._forget_password()
            raise FactoryStartError(f"vine_factory exited at once with status {status}: {output}")
        return self

    def _await_ready(self, fd: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                return False
            chunk = os.read(fd, 64)
            if not chunk:
                return b"ready" in data  # EOF: it either said so, or died first
            data += chunk
            if b"ready" in data:
                return True
        return False

    def _read_output(self) -> str:
        try:
            self._output.seek(0)
            return self._output.read()[-4000:].decode(errors="replace").strip() or "(no output)"
        except (OSError, ValueError):
            return "(no output)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the factory; it removes its workers first. Anything it leaves behind is killed here."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        descendants = []
        try:
            import psutil

            descendants = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        except Exception:  # noqa: BLE001 - psutil missing or the process just went
            descendants = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(REMOVE_GRACE + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in descendants:  # a worker the factory could not remove must not outlive it
            try:
                if child.is_running():
                    child.kill()
                    child.wait(5)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._output is not None:
            self._output.close()
            self._output = None
        self._forget_password()

    def _forget_password(self) -> None:
        """Remove the copy of the manager's password written for this run (a fresh one is written by start())."""
        if self._written_password:
            unlink_quietly(self._written_password)
            if self._opts.get("password") == self._written_password:
                del self._opts["password"]
            self._written_password = None


if __name__ == "__main__":
    sys.exit(main())
