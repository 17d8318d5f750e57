"""The executor's manager process: the core Manager (and Factory) out of the user's process.

::

    user's process (Parsl's DFK)                     manager process (python -m parslvine.manager_process)
    ────────────────────────────                     ─────────────────────────────────────────────────────
    submit: serialize func/args, staging plan,       reader: each batch ─► make_task ─► Manager.submit
      settings ─► outbox                                                            (library installed once)
    writer thread: the whole outbox, one frame ────► (socketpair, length-prefixed pickle of a list)
    reader thread: completes futures ◄──── one frame per batch ◄── collector: Manager.wait, unpack_result

A call costs the DFK about a millisecond of the user's process's CPU; the manager's I/O thread
and its collector cost another 0.6 ms (serverless) to 1.2 ms (regular: a PythonTask has more to
track) there, under the same GIL. Here that work runs in a process of its own (on another core),
and the user's process only pickles the call's already-serialized bytes into a batch and
unpickles the batched results.

The manager process ends when it is told to (``shutdown``), when its socket reaches EOF, or when
its parent is gone (it checks its parent pid every second: a socket end inherited by a forked
child of the user's process would otherwise keep it alive). It stops its factory and closes its
manager (which tells the workers it started to exit) before it exits. If the manager process dies,
every pending call fails with :class:`~parslvine.errors.TaskVineManagerFailure` (through Parsl's
bad-state mechanism) and later submits raise it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

from .errors import ParslVineError, TaskVineManagerFailure, TaskVineTaskFailure

logger = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct("!Q")
PARENT_CHECK_INTERVAL = 1.0  # s
COLLECT_INTERVAL = 0.5  # s
MAX_RESULTS_PER_FRAME = 2000
READ_SIZE = 1 << 20  # bytes asked of one recv: a burst of frames arrives in one read
START_TIMEOUT = 120.0  # s: the manager process imports Parsl and binds its port
STOP_TIMEOUT = 30.0  # s


class ManagerProcessError(ParslVineError):
    """The manager process could not be started or talked to (the message says why)."""


def frame(items: list[Any]) -> bytes:
    """The bytes of one frame: the length-prefixed pickle of ``items``."""
    data = pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, items: list[Any]) -> None:
    """One frame of ``items``: one ``sendall`` per batch."""
    sock.sendall(frame(items))


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> list[Any] | None:
    """The next frame's items, or None at EOF."""
    header = _recv_exact(sock, FRAME_HEADER.size)
    if header is None:
        return None
    (size,) = FRAME_HEADER.unpack(header)
    data = _recv_exact(sock, size) if size else b""
    if data is None:
        return None
    return pickle.loads(data)


class FrameReader:
    """The frames arriving on a stream socket, read in as few ``recv`` calls as the data allows.

    :func:`recv_frame` reads a frame's header and its body with a call each, and every call lets
    go of the interpreter lock and takes it back: twice per frame, in the user's process, whose
    lock the DFK needs. This reads whatever has arrived (up to :data:`READ_SIZE` at once) and hands
    out every whole frame in it, calling ``recv`` again only when no whole frame is left.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def next(self) -> list[Any] | None:
        """The next frame's items, or None at EOF (a partial frame at EOF is dropped: its sender died)."""
        header = FRAME_HEADER.size
        while True:
            if len(self._buf) >= header:
                (size,) = FRAME_HEADER.unpack_from(self._buf)
                end = header + size
                if len(self._buf) >= end:
                    data = bytes(self._buf[header:end])
                    del self._buf[:end]
                    return pickle.loads(data) if data else []
                want = max(READ_SIZE, end - len(self._buf))
            else:
                want = READ_SIZE
            chunk = self._sock.recv(want)
            if not chunk:
                return None
            self._buf += chunk


@dataclasses.dataclass
class ManagerProcessInfo:
    """What the user's process knows of the manager in the manager process."""

    port: int
    name: str | None
    logging_directory: str
    pid: int


# ---------------------------------------------------------------------------------------------------------
# The user's side
# ---------------------------------------------------------------------------------------------------------
class ManagerProcessClient:
    """Starts the manager process and moves calls to it and results back, in batches.

    ``on_result(executor_id, ok, payload, exit_code)``: ``ok`` with the runner's Parsl-serialized
    bytes, else ``payload`` is the failure (an exception). ``on_failure(exc)``: the manager process
    failed or exited while it was not told to.
    """

    def __init__(self, label: str, on_result: Any, on_failure: Any) -> None:
        self.label = label
        self._on_result = on_result
        self._on_failure = on_failure
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._outbox: list[Any] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._flushed = threading.Event()
        self._writer: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self.info: ManagerProcessInfo | None = None

    def start(self, setup: dict[str, Any]) -> ManagerProcessInfo:
        """Start the process, send it ``setup``; returns its manager's port and name, or raises its error."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        from .launch import PACKAGE_ROOT

        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "parslvine.manager_process", str(theirs.fileno())],
                                          pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._sock = ours
        try:
            send_frame(ours, [setup])
            ours.settimeout(START_TIMEOUT)
            reply = recv_frame(ours)
            ours.settimeout(None)
        except (OSError, pickle.PickleError) as exc:
            self._kill()
            raise ManagerProcessError(f"executor {self.label!r}: the manager process did not start: {exc}") from exc
        if reply is None:
            code = self._kill()
            raise ManagerProcessError(f"executor {self.label!r}: the manager process exited while starting (exit code {code})")
        kind, *rest = reply[0]
        if kind == "error":
            self._kill()
            raise rest[0]
        _kind, port, name, logdir = reply[0]
        self.info = ManagerProcessInfo(port, name, logdir, self._proc.pid)
        self._writer = threading.Thread(target=self._write, name=f"parslvine-mp-writer-{self.label}", daemon=True)
        self._reader = threading.Thread(target=self._read, name=f"parslvine-mp-reader-{self.label}", daemon=True)
        self._writer.start()
        self._reader.start()
        return self.info

    def send(self, item: Any) -> None:
        """Queue one item (a call); the writer sends everything queued in one frame."""
        with self._cond:
            if self._stopping:
                raise TaskVineManagerFailure(f"executor {self.label!r} is shutting down")
            self._outbox.append(item)
            if len(self._outbox) == 1:
                self._cond.notify()

    def flush_logs(self, timeout: float = 30.0) -> None:
        """Ask the manager process to flush its manager's logs, and wait until it has."""
        self._flushed.clear()
        self.send(("flush",))
        if not self._flushed.wait(timeout):
            raise ManagerProcessError(f"executor {self.label!r}: the manager process did not flush its logs")

    def _write(self) -> None:
        assert self._sock is not None
        while True:
            with self._cond:
                while not self._outbox and not self._stopping:
                    self._cond.wait()
                batch, self._outbox = self._outbox, []
                stopping = self._stopping
            if batch:
                try:
                    send_frame(self._sock, batch)
                except OSError:
                    return  # the reader reports the process's end
            if stopping:
                try:
                    send_frame(self._sock, [("stop",)])
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return

    def _read(self) -> None:
        assert self._sock is not None
        frames = FrameReader(self._sock)
        while True:
            try:
                items = frames.next()
            except (OSError, pickle.PickleError, EOFError) as exc:
                items = None
                logger.warning("%s: reading from the manager process failed: %s", self.label, exc)
            if items is None:
                break
            for item in items:
                kind = item[0]
                if kind == "done":
                    _k, executor_id, ok, payload, exit_code = item
                    self._on_result(executor_id, ok, payload, exit_code)
                elif kind == "flushed":
                    self._flushed.set()
                elif kind == "failed":
                    self._on_failure(TaskVineManagerFailure(f"the manager of executor {self.label!r} failed: {item[1]}"))
        with self._cond:
            stopping = self._stopping
        if not stopping:
            code = self._proc.wait(10) if self._proc is not None else None
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            self._on_failure(TaskVineManagerFailure(f"the manager process of executor {self.label!r} (pid "
                                                    f"{self._proc.pid if self._proc else '?'}) {how}"))

    def stop(self) -> None:
        """Tell the process to stop its factory and manager, and wait for it (killed after a while)."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join(STOP_TIMEOUT)
        if self._proc is not None:
            try:
                self._proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning("%s: the manager process did not stop; killing it", self.label)
                self._kill()
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if self._sock is not None:
            self._sock.close()

    def _kill(self) -> int | None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.kill()
        return self._proc.wait(STOP_TIMEOUT)


# ---------------------------------------------------------------------------------------------------------
# The manager process's side
# ---------------------------------------------------------------------------------------------------------
class _ManagerServer:
    """The manager process's work: calls in, tasks to the manager, results out (see the module docstring)."""

    def __init__(self, sock: socket.socket, setup: dict[str, Any]) -> None:
        self.sock = sock
        self.setup = setup
        self.config = setup["config"]
        self.m: Any = None
        self.factory: Any = None
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        self._outstanding = 0
        self._stopping = False
        self._library_installed = False

    def send(self, items: list[Any]) -> None:
        with self._send_lock:
            send_frame(self.sock, items)

    def start(self) -> None:
        import core as vine

        from .launch import start_factory

        config, setup = self.config, self.setup
        m = vine.Manager(port=config.port, name=config.project_name, run_info_path=config.vine_log_dir,
                         shutdown=setup["launch"] != "manual")
        self.m = m
        try:
            configure_manager(m, config)
            if setup["launch"] == "factory":
                fc = dataclasses.replace(setup["factory_config"], scratch_dir=config.vine_log_dir, _project_port=m.port,
                                         _project_address=config.address, _project_name=config.project_name,
                                         _project_password_file=config.project_password_file)
                self.factory = start_factory(m, config, fc)
        except BaseException:
            m.close()
            raise

    def serve(self) -> None:
        collector = threading.Thread(target=self._collect, name="parslvine-mp-collector", daemon=True)
        collector.start()
        watcher = threading.Thread(target=self._watch_parent, args=(os.getppid(),), name="parslvine-mp-parent", daemon=True)
        watcher.start()
        frames = FrameReader(self.sock)
        try:
            while True:
                try:
                    items = frames.next()
                except OSError:
                    items = None
                if items is None or not self._handle(items):
                    break
        finally:
            self._stop()
            collector.join(STOP_TIMEOUT)

    def _handle(self, items: list[Any]) -> bool:
        from .resources import TaskSettings
        from .runner import WARM_IMPORTS, run_parsl_call
        from .staging import StagingPlan
        from .tasks import make_task

        for item in items:
            kind = item[0]
            if kind == "call":
                _k, executor_id, settings_fields, function, arguments, plan_fields = item
                try:
                    settings, plan = TaskSettings.from_wire(settings_fields), StagingPlan.from_wire(plan_fields)
                    if settings.exec_mode == "serverless" and not self._library_installed:
                        self._install_library()
                    task = make_task(self.m, self.config, settings, run_parsl_call, function, arguments, plan, WARM_IMPORTS)
                    task._parslvine_id = executor_id
                    self.m.submit(task)
                    # Counted once the manager has it: counted before, the collector's wait() could find
                    # the manager with nothing to wait for and return at once, again and again, taking
                    # the interpreter lock from this very submit (seen with one call at a time). The
                    # collector may take the task first (the count dips below zero): it waits only while
                    # the count is not positive, so neither order loses a wake-up.
                    with self._cond:
                        self._outstanding += 1
                        if self._outstanding == 1:  # the collector waits only while nothing is outstanding
                            self._cond.notify_all()
                except Exception as exc:  # noqa: BLE001 - this call's failure, reported to its future
                    self.send([("done", executor_id, False, _picklable(exc), None)])
            elif kind == "flush":
                self.m._call(self.m._logs.flush)
                self.send([("flushed",)])
            elif kind == "stop":
                return False
        return True

    def _install_library(self) -> None:
        from .runner import WARM_IMPORTS, run_parsl_call
        from .tasks import LIBRARY_NAME, build_library

        library = build_library(self.m, self.config, run_parsl_call, WARM_IMPORTS)
        self.m.install_library(library)
        self._library_installed = True
        logger.info("installed serverless library %r", LIBRARY_NAME)

    def _collect(self) -> None:
        m = self.m
        while True:
            with self._cond:
                while not self._stopping and self._outstanding <= 0:
                    self._cond.wait()
                if self._stopping:
                    return
            try:
                task = m.wait(COLLECT_INTERVAL)
                batch = []
                while task is not None:
                    batch.append(self._result(task))
                    if len(batch) >= MAX_RESULTS_PER_FRAME:
                        break
                    task = m.wait(0)  # drain what else has finished: one frame for all of it
            except Exception as exc:  # the manager failed: the user's process must know
                logger.exception("the manager failed")
                try:
                    self.send([("failed", f"{type(exc).__name__}: {exc}")])
                except OSError:
                    pass
                return
            if batch:
                with self._cond:
                    self._outstanding -= len(batch)
                try:
                    self.send(batch)
                except OSError:
                    return

    def _result(self, task: Any) -> tuple[Any, ...]:
        from .tasks import forget_buffers, task_output, unpack_result

        executor_id = getattr(task, "_parslvine_id", None)
        data = task_output(task)
        forget_buffers(self.m, task)
        if not isinstance(data, (bytes, bytearray)):
            reason = f"task {task.id} ended with '{task.result}' (exit code {task.exit_code})"
            if str(data):
                reason += f": {data}"
            return ("done", executor_id, False, TaskVineTaskFailure(reason, task.exit_code), task.exit_code)
        try:
            return ("done", executor_id, True, unpack_result(task, bytes(data)), None)
        except Exception as exc:  # noqa: BLE001 - an unreadable reply is this call's failure
            return ("done", executor_id, False, TaskVineTaskFailure(
                f"the result of task {task.id} cannot be deserialized: {type(exc).__name__}: {exc}"), None)

    def _watch_parent(self, parent: int) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(PARENT_CHECK_INTERVAL)
            if os.getppid() != parent:
                logger.warning("the user's process (pid %d) is gone; stopping", parent)
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)  # ends the reader's recv: serve() stops everything
                except OSError:
                    pass
                return

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.factory is not None:
            self.factory.stop()
        if self.m is not None:
            self.m.close()


def configure_manager(m: Any, config: Any) -> None:
    """Apply a TaskVineManagerConfig's manager settings (password, tuning, peer transfers, framework,
    autolabel)."""
    from .configs import AUTOLABEL_MODES

    if config.project_password_file:
        m.set_password_file(config.project_password_file)
    if config.wait_for_workers:
        m.tune("wait-for-workers", config.wait_for_workers)
    if config.enable_peer_transfers:
        m.enable_peer_transfers()
    else:
        m.disable_peer_transfers()
    if config.project_name:
        m.set_property("framework", "parsl")
    if config.autolabel:
        # Every category (None: those not given a mode of their own, which is all of them here) is
        # sized from the peaks monitoring measures, as Parsl's executor sets each task's category.
        m.enable_monitoring()
        if config.autolabel_window is not None:
            m.tune("category-steady-n-tasks", config.autolabel_window)
        m.set_category_mode(None, AUTOLABEL_MODES[config.autolabel_algorithm])
    for key, value in (config.tune_parameters or {}).items():
        m.tune(key, value)


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - sent as our own error with the original's text
        return TaskVineTaskFailure(f"{type(exc).__name__}: {exc}")


def main(argv: list[str]) -> int:
    """``python -m parslvine.manager_process FD``: serve the executor on the socket at file descriptor FD."""
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: python -m parslvine.manager_process FD (started by parslvine's TaskVineExecutor)\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="parslvine manager process: %(levelname)s %(message)s")
    sock = socket.socket(fileno=int(argv[1]))
    setup_frame = recv_frame(sock)
    if not setup_frame:
        return 1
    server = _ManagerServer(sock, setup_frame[0])
    try:
        server.start()
    except BaseException as exc:  # noqa: BLE001 - the executor's start() re-raises it
        send_frame(sock, [("error", _picklable(exc))])
        return 1
    m = server.m
    send_frame(sock, [("started", m.port, m.name, m.logging_directory)])
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
