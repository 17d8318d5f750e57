"""The worker's side of Python tasks and libraries: a fork server, library processes, function calls.

::

    task definition           how it runs
    ───────────────           ───────────
    "python" (no env)         fork server child (core/worker/forkserver.py): no interpreter start
    "python" + environment    `python3 .vine_runner.py task ...` through the env's run_in_env
    "library"                 `python3 .vine_library_runner.py ...` as a long task; it connects back on an
                              abstract unix socket, says "ready", then serves calls
    "function_call"           sent to its library instance over that socket; the library (or a fork
                              of it, through a pipe) sends the result envelope back in its "done",
                              and it travels home inline with the completion. A plain call (no
                              files of the user's, no limits) needs no sandbox (``fast_call``).

Everything else (sandbox, inputs, stdout capture, time_max kill, outputs) is the worker's ordinary
task path; this runner only replaces how the process starts and how its end is noticed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Protocol

from .. import constants as C
from ..wire import messages as M
from ..wire.connection import queue_bytes
from ..wire.remote import FramingError, MessageReader, encode_library_call, encode_library_message
from .forkserver import ForkServer

if TYPE_CHECKING:
    from ..wire.connection import Connection
    from .cache import WorkerCache
    from .running import RunningTask
    from .sandbox import WorkerSandboxes

log = logging.getLogger("vine_worker")

REMOTE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wire", "remote.py")
LIBRARY_LOG_TAIL = 64 << 10


class LibraryProcess:
    """One running library instance as the worker sees it."""

    def __init__(self, instance_id: int, name: str) -> None:
        self.id = instance_id
        self.name = name
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future[int | None]] = {}
        self.results: dict[int, bytes] = {}  # inline results of direct-mode calls, by call id
        self.sandbox = ""  # the instance's own sandbox (its working directory)
        self._outgoing: list[bytes] = []
        self.mode = "fork"
        self.writer: asyncio.WriteTransport | None = None  # the library socket's transport (LibraryChannel)
        self.dead = False
        self.error = ""
        self.pid = 0
        self.finished = asyncio.Event()  # set once the instance's end has been reported
        # When the last direct-mode call sent on the fast path came back: the library runs those one
        # at a time, in the order sent, so the next one started no earlier (see _fast_call_done).
        self.direct_end = 0.0

    async def wait_ready(self) -> bool:
        return await asyncio.shield(self.ready)

    def send(self, msg: dict[str, Any]) -> bool:
        """Queue a message; those of one event-loop turn reach the library in one write."""
        return self._queue(encode_library_message(msg))  # the library socket's framing (core.wire.remote)

    def send_call(self, call_id: int, mode: str | None, fields: dict[str, Any]) -> bool:
        """Queue a call in the socket's compact form: the library reads its id and mode, and only the
        process that runs it unpickles ``fields`` (core/wire/remote.py, the library socket)."""
        return self._queue(encode_library_call(call_id, mode, fields))

    def _queue(self, frame: bytes) -> bool:
        if self.dead or self.writer is None:
            return False
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self._outgoing.append(frame)
        return True

    def flush(self) -> None:
        """Write the queued messages (at the turn's end, or now: flush_libraries)."""
        out, self._outgoing = self._outgoing, []
        if out and self.writer is not None and not self.dead:
            self.writer.write(b"".join(out))

    def die(self) -> None:
        self.dead = True
        if not self.ready.done():
            self.ready.set_result(False)
        for fut in self.pending.values():
            if not fut.done():
                if isinstance(fut, CallWaiter):
                    fut.end_soon(None)  # its end runs after the instance is gone, as a future's callback did
                else:
                    fut.set_result(None)
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CallWaiter:
    """The end of a call sent on the fast path (``fast_call``), handed on as soon as it is read.

    In place of an asyncio future, whose done-callback would run one turn of the loop later (and
    the complete it sends one more after that): per FunctionCall that was a tenth of the worker's
    time. ``set_result`` runs ``on_end(self)`` at once, from the library channel's read;
    ``cancel`` (Worker.kill) and ``end_soon`` (the instance died) run it in the next turn, as
    the future did. Ended once: later ends are ignored.
    """

    __slots__ = ("_on_end", "_state", "_status")

    def __init__(self, on_end: Callable[[CallWaiter], None]) -> None:
        self._on_end = on_end
        self._state = 0  # 0 running, 1 ended (status known), 2 cancelled
        self._status: int | None = None

    def done(self) -> bool:
        return self._state != 0

    def cancelled(self) -> bool:
        return self._state == 2

    def result(self) -> int | None:
        return self._status

    def set_result(self, status: int | None) -> None:
        if self._state == 0:
            self._state, self._status = 1, status
            self._on_end(self)

    def end_soon(self, status: int | None) -> None:
        if self._state == 0:
            self._state, self._status = 1, status
            asyncio.get_running_loop().call_soon(self._on_end, self)

    def cancel(self) -> bool:
        if self._state != 0:
            return False
        self._state = 2
        asyncio.get_running_loop().call_soon(self._on_end, self)
        return True


class LibraryChannel(asyncio.Protocol):
    """The worker's end of one library instance's socket: its messages handled as they are read.

    A reading coroutine took a wake-up and a turn of the loop per read, then a future's callback
    another. Here a call's ``done`` ends it at once (a fast-path call's complete is queued in the
    same callback) and what the read queued for the manager leaves in one write at its end. A
    second connection for the same instance, or one after its end, is closed; bytes that are not
    the socket's framing, or a message without its op's fields, drop that instance only.
    """

    def __init__(self, inst: LibraryProcess, flush: Callable[[], None]) -> None:
        self.inst = inst
        self.flush = flush
        self.transport: asyncio.Transport | None = None
        self.messages = MessageReader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        inst = self.inst
        if inst.writer is not None or inst.dead:
            transport.close()
            return
        self.transport = inst.writer = transport

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        inst = self.inst
        try:
            for msg in self.messages.feed(data):
                op = msg.get("op")
                if op == "ready":
                    inst.pid = int(msg.get("pid") or 0)
                    inst.mode = str(msg.get("mode") or "fork")
                    if not inst.ready.done():
                        inst.ready.set_result(True)
                elif op == "failed":
                    inst.error = str(msg.get("error") or "")
                elif op == "done":
                    fut = inst.pending.get(int(msg["id"]))
                    if fut is not None and not fut.done():
                        if msg.get("result") is not None:
                            inst.results[int(msg["id"])] = msg["result"]
                        fut.set_result(int(msg["status"]))
        except (FramingError, ValueError, KeyError, TypeError) as exc:
            # FramingError: bytes that are not the library socket's framing; the others: a message
            # without the fields its op has. Either way that library instance only is dropped.
            log.info("library %s: connection ended: %s", inst.name, exc)
            self._end()
        self.flush()

    def eof_received(self) -> bool:
        return False  # the transport closes: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            if exc is not None:
                log.info("library %s: connection ended: %s", self.inst.name, exc)
            self._end()

    def _end(self) -> None:
        self.transport = None
        self.inst.die()


class WorkerTasks(Protocol):
    """What the Python runner uses of the worker: its task path, which it replaces or extends."""

    tasks: dict[int, RunningTask]
    conn: Connection | None
    last_work: float

    def send(self, msg: Any, payload: bytes = b"") -> None: ...
    def flush(self) -> None: ...
    def run_task(self, rt: RunningTask) -> Coroutine[Any, Any, None]: ...
    def execute(self, rt: RunningTask) -> Coroutine[Any, Any, int]: ...
    def task_env(self, rt: RunningTask) -> dict[str, str]: ...
    def kill(self, rt: RunningTask, reason: int | None = None) -> None: ...
    def watch(self, rt: RunningTask, outputs: list[M.OutputRef]) -> Coroutine[Any, Any, None]: ...
    def monitor(self, rt: RunningTask, options: M.MonitorOptions) -> Coroutine[Any, Any, None]: ...
    def supervise(self, rt: RunningTask) -> Coroutine[Any, Any, int]: ...
    def start_general(self, rt: RunningTask) -> None: ...
    def end_task(self, rt: RunningTask, result: int, code: int, reason: str) -> None: ...
    def _task_error(self, rt: RunningTask, exc: BaseException) -> tuple[int, str]: ...
    def _exit_result(self, rt: RunningTask, status: int) -> tuple[int, int, str]: ...
    def release(self, rt: RunningTask) -> None: ...
    def read_stdout(self, rt: RunningTask) -> tuple[bytes, bool]: ...


class PythonRunner:
    """A member of :class:`core.worker.Worker` (``worker.python``): the fork server and the library
    instances, given the worker's task path (:class:`WorkerTasks`), its cache and its sandboxes."""

    def __init__(self, worker: WorkerTasks, cache: WorkerCache, sandboxes: WorkerSandboxes) -> None:
        self._worker = worker
        self.cache = cache
        self.sandboxes = sandboxes
        self.fork_server = ForkServer()  # started on the first PythonTask, restarted if it dies
        self.libraries: dict[int, LibraryProcess] = {}  # instance id -> its process, while it runs

    # -- hooks called by Worker -----------------------------------------------------------------------------
    def task_coroutine(self, rt: RunningTask) -> Coroutine[Any, Any, None]:
        """What runs a started task: a library instance, or the ordinary task path."""
        if rt.spec.library is not None:
            return self._run_library(rt)
        return self._worker.run_task(rt)

    def special_execute(self, rt: RunningTask) -> Coroutine[Any, Any, int] | None:
        """A replacement for ``sh -c command``, or None for the ordinary way."""
        spec = rt.spec
        if spec.function_call is not None:
            return self._execute_call(rt, spec.function_call)
        if spec.python is not None and not spec.environments and rt.fallback_command is None:
            return self._execute_forked(rt, spec.python)
        return None

    # -- Python tasks through the fork server -------------------------------------------------------------
    def start_forked(self, rt: RunningTask) -> bool:
        """Start a plain PythonTask on the running fork server without a coroutine; whether it did.

        Plain: no environment, no time limits, no monitoring, no watched output, every input in
        the cache, and a server already running (the first task starts it the ordinary way). The
        request is written now and the child's end wraps the task up from the channel's callback
        (``_forked_ended``): the ordinary path's coroutines (run_task, execute, spawn, supervise)
        took four to five turns of the loop per task, about a third of the worker's time for a
        small one. The steps and the results are the ordinary path's.
        """
        spec = rt.spec
        py = spec.python
        if py is None or spec.function_call is not None or spec.library is not None or spec.environments:
            return False
        if spec.time_max or spec.time_end or spec.monitor is not None or rt.fallback_command is not None:
            return False
        server = self.fork_server
        entries = self.cache.entries
        if not server.running or any(o.watch for o in spec.outputs) or not all(i.name in entries for i in spec.inputs):
            return False
        worker = self._worker
        try:
            self.sandboxes.link_inputs(rt)
            stdout_path = rt.stdout_at = os.path.join(rt.sandbox, ".vine-stdout")
            request, fast = self._fork_request(rt, py)
            rt.starter = server.start(rt.id, rt.sandbox, worker.task_env(rt), stdout_path, request,  # type: ignore[assignment]
                                      lambda pid: self._forked_started(rt, pid), lambda status: self._forked_ended(rt, py, status),
                                      **fast)
            if rt.starter is None:  # (running was checked above, in this same call)
                raise RuntimeError("the fork server stopped before the task's request was written")
        except Exception as exc:  # noqa: BLE001 - the worker must survive any single task
            result, reason = worker._task_error(rt, exc)
            worker.end_task(rt, result, -1, reason)
        return True

    def _forked_started(self, rt: RunningTask, pid: int) -> None:
        rt.pid = pid
        rt.start = time.time()

    def _forked_ended(self, rt: RunningTask, py: M.PythonRun, status: int | None) -> None:
        result = self.fork_server.take_result(rt.id)  # taken even for a killed task, so none is left behind
        worker = self._worker
        if worker.tasks.get(rt.id) is not rt:
            return  # killed by the manager
        if status is None:  # the server ended before it named the child: this host's problem, sent again
            worker.end_task(rt, C.VINE_RESULT_FORSAKEN, -1, "worker problem: the fork server ended before the task started")
            return
        rt.returncode = status
        if result is not None and py.output:
            rt.inline_outputs = {py.output: result}
        res, code, reason = worker._exit_result(rt, status)
        worker.end_task(rt, res, code, reason)  # (its own failure is the task's: Worker.end_task)

    async def _execute_forked(self, rt: RunningTask, py: M.PythonRun) -> int:
        # The child creates its stdout file (appending to the empty one a recycled sandbox keeps):
        # the worker opens it only at the end, and only when something was written (core/worker/running.py).
        stdout_path = rt.stdout_at = os.path.join(rt.sandbox, ".vine-stdout")
        env = self._worker.task_env(rt)
        request, fast = self._fork_request(rt, py)
        server = self.fork_server
        try:
            pid, exited = await server.spawn(rt.id, rt.sandbox, env, stdout_path, request, **fast)
        except OSError as exc:
            # No fork server: run the same code in a fresh interpreter of the worker's own Python.
            log.warning("fork server unavailable (%s); task %s runs in a new interpreter", exc, rt.id)
            self._place_fast_inputs(rt, py)
            rt.stdout_at = ""
            rt.fallback_command = shlex.join([sys.executable, REMOTE_PATH, "task", py.function, py.args, py.output or "-",
                                              "1" if py.serialize else "0"])
            return await self._worker.execute(rt)
        rt.pid = pid
        rt.start = time.time()
        rt.done = exited  # supervised like any task: time limits, watches, monitoring
        try:
            status = rt.returncode = await self._worker.supervise(rt)
        finally:
            result = server.take_result(rt.id)  # taken even when cancelled, so none is left behind
        if result is not None and py.output:
            rt.inline_outputs = {py.output: result}
        return status

    def _fork_request(self, rt: RunningTask, py: M.PythonRun) -> tuple[dict[str, Any], dict[str, Any]]:
        """The fork-server request for PythonTask ``rt``: what the child finds ready instead of as files.

        The function input (marked ``in_place`` by PythonTask, so not linked into the sandbox) is
        named by its cache file, which the server unpickles once per worker; the result comes back
        inline whenever the task's result is an ordinary output (not watched, not written where
        the task's own files go).
        """
        request = py.to_wire()  # the fork server's "python" object (core.wire.remote.forked_child_main reads it)
        fast: dict[str, Any] = {}
        for inp in rt.spec.inputs:
            if inp.in_place and inp.remote == py.function:
                name = inp.name
                if name in self.cache.memory:
                    self.cache.spill(name)  # the server reads it once, from disk
                request["function"] = fast["function_path"] = self.cache.path(name)
                fast["function_key"] = name
        if py.output and py.result_inline:
            fast["result_inline"] = True
        return request, fast

    def _place_fast_inputs(self, rt: RunningTask, py: M.PythonRun) -> None:
        """Put what the fork server would have been handed in memory into the sandbox, as files."""
        for inp in rt.spec.inputs:
            if inp.in_place:
                if inp.name in self.cache.memory:
                    self.cache.spill(inp.name)
                os.symlink(self.cache.path(inp.name), os.path.join(rt.sandbox, inp.remote))
        if py.args_inline is not None:
            with open(os.path.join(rt.sandbox, py.args), "wb") as fh:
                fh.write(base64.b64decode(py.args_inline))

    def collect_inline_output(self, rt: RunningTask, o: M.OutputRef, data: bytes, outputs: dict[str, int],
                              cached: dict[str, int]) -> None:
        """An output a forked PythonTask sent back in memory: sent home, or cached, from memory.

        Sent home inside the task's ``complete`` when the manager allows a result of its size there
        (``PythonRun.result_in_complete``: ``rt.complete_result``, which Worker puts ahead of the
        stdout), else as a stream queued before it. Called by ``Worker._collect_outputs`` for the
        outputs named in ``rt.inline_outputs``.
        """
        name = o.name
        if name in self.cache.entries or name in self.cache.memory:
            self.cache.unlink(name)  # an older copy (looking for one on disk costs four stat calls)
        level = o.level
        if o.send_back:
            conn = self._worker.conn
            py = rt.spec.python
            if py is not None and len(data) <= py.result_in_complete and rt.complete_result is None:
                # Small, and the manager reads it there: inside the complete, ahead of the stdout.
                rt.complete_result = (name, data)
            elif conn is not None:
                # Queued, not drained: it leaves in one write with the task's complete (at most
                # 1 MiB, in memory already), not in two writes of its own before it.
                queue_bytes(conn, name, data, task=rt.id)
            if level <= C.VINE_CACHE_LEVEL_TASK:
                outputs[name] = len(data)
                return
        self.cache.keep_in_memory(name, data)
        if level >= C.VINE_CACHE_LEVEL_FOREVER:
            self.cache.spill(name)  # outlives this worker process: it must be on disk
        outputs[name] = cached[name] = self.cache.add(name, max(level, C.VINE_CACHE_LEVEL_WORKFLOW))

    def flush_libraries(self) -> None:
        """Write what the calls handed over so far queued for their library instances, now."""
        for inst in self.libraries.values():
            inst.flush()  # (the turn's end, already scheduled, then finds nothing left)

    # -- function calls -----------------------------------------------------------------------------------------
    async def _fast_call_when_ready(self, rt: RunningTask, arriving: list[asyncio.Future[bool]]) -> None:
        arrived = all([await asyncio.shield(fut) for fut in arriving])  # shared futures: see _gather_inputs
        if self._worker.tasks.get(rt.id) is not rt:
            return  # killed while it waited
        rt.starter = None
        if not arrived or not self.fast_call(rt, wait_inputs=False):
            self._worker.start_general(rt)  # the ordinary path reports what is missing

    def fast_call(self, rt: RunningTask, wait_inputs: bool = True) -> bool:
        """Hand a plain call straight to its ready instance: no sandbox, no coroutine.

        Plain = no environment, no time limits, no monitoring, and files only of the kinds the call
        machinery makes itself, all already in the cache: arguments that are other tasks' results
        (``.vine_ref_*``), a big-arguments file, and its own temp output. The library reads those
        straight from the cache and writes the output straight into it, so nothing is linked,
        created or removed per call. Anything else (a user's input file the function opens by name,
        an input still on its way, an instance not ready yet) takes the general path with a
        sandbox. A forked call (fork mode) runs in the instance's sandbox as a direct one does,
        in a process of its own. Returns whether the fast path was taken.
        """
        spec = rt.spec
        fc = spec.function_call
        if fc is None or spec.environments or spec.time_max or spec.time_end or spec.monitor is not None:
            return False
        cache = self.cache.entries
        paths: dict[str, str | bytes] = {}
        arriving: list[asyncio.Future[bool]] = []
        for inp in spec.inputs:
            remote = inp.remote
            if not (remote.startswith(".vine_ref_") or remote == fc.args_file):
                return False
            if inp.name not in cache:
                fut_in = self.cache.pending.get(inp.name)
                if fut_in is None or not wait_inputs:
                    return False
                arriving.append(fut_in)
            # A file kept in memory travels to the library as bytes: nothing to open there either.
            paths[remote] = self.cache.memory.get(inp.name) or self.cache.path(inp.name)
        outputs = spec.outputs
        output: M.OutputRef | None = None
        if outputs:
            if len(outputs) != 1 or outputs[0].remote != fc.output or outputs[0].kind != "temp":
                return False
            output = outputs[0]
        inst = self.libraries.get(spec.library_instance or 0)
        if inst is None or inst.dead or not inst.sandbox or not inst.ready.done() or not inst.ready.result():
            return False
        if arriving:
            # Inputs still on their way (peer transfers): wait for them here, then take this path.
            self._worker.tasks[rt.id] = rt
            rt.starter = asyncio.create_task(self._fast_call_when_ready(rt, arriving))
            return True
        result_path = os.path.join(inst.sandbox, f".vine-result-{rt.id}")  # used only for results over 1 MiB
        output_path = self.cache.path(output.name) if output is not None else None
        mode = fc.mode or inst.mode
        if not inst.send_call(rt.id, mode, self._fast_call_fields(fc, paths, output_path)):
            return False
        direct = mode == "direct"
        fut = CallWaiter(lambda f: self._fast_call_done(rt, inst, result_path, output, f, direct))
        inst.pending[rt.id] = fut  # type: ignore[assignment]  # (a future's done/set_result/cancel, ended at once)
        rt.start = time.time()
        self._worker.tasks[rt.id] = rt
        if mode != "direct":
            # Worker.kill cancels a task's starter: for a forked call that cancels this waiter,
            # and _fast_call_done then has the library kill the child (a direct call cannot be
            # stopped without its library, so it runs to its end and its result is dropped).
            rt.starter = fut  # type: ignore[assignment]
        return True

    def _fast_call_fields(self, fc: M.CallRef, paths: dict[str, str | bytes], output_path: str | None) -> dict[str, Any]:
        """A fast-path call's fields, only those that differ from the library's defaults: it runs the
        call in its own sandbox, puts a result over 1 MiB in ``.vine-result-<id>`` there, and has no
        arguments file, no paths and no output unless they are named."""
        fields: dict[str, Any] = {"function": fc.function, "output_inline": True}
        if fc.args is not None:
            fields["args"] = base64.b64decode(fc.args)
        if fc.args_file:
            fields["args_file"] = self._spilled_path(fc.args_file, paths)
        if paths:
            fields["paths"] = paths
        if output_path is not None:
            fields["output"] = output_path
        return fields

    def _spilled_path(self, remote: str, paths: dict[str, str | bytes]) -> str:
        """The on-disk path of input ``remote`` (its bytes are written out if they were in memory)."""
        src = paths[remote]
        if isinstance(src, bytes):
            for name, data in list(self.cache.memory.items()):
                if data is src:
                    self.cache.spill(name)
                    paths[remote] = src = self.cache.path(name)
                    break
        return str(src)

    def _fast_call_done(self, rt: RunningTask, inst: LibraryProcess, result_path: str, output: M.OutputRef | None,
                        fut: CallWaiter, direct: bool = False) -> None:
        inst.pending.pop(rt.id, None)
        data = inst.results.pop(rt.id, None)
        if fut.cancelled():  # a forked call killed (cancelled by the manager, or the worker is stopping)
            inst.send({"op": "kill", "id": rt.id})
            if output is not None and output.name not in self.cache.entries:
                self.cache.unlink(output.name)  # a result it wrote already
            return
        status = fut.result()
        if data is None and status is not None:
            try:
                with open(result_path, "rb") as fh:
                    data = fh.read()
                os.unlink(result_path)
            except OSError:
                data = b""
        cached: dict[str, int] = {}
        if self._worker.tasks.get(rt.id) is not rt:
            if output is not None and output.name not in self.cache.entries:
                self.cache.unlink(output.name)  # cancelled while it ran: drop what it wrote
            return
        result, code = (C.VINE_RESULT_LIBRARY_EXIT, 9) if status is None else (C.VINE_RESULT_SUCCESS, status)
        if output is not None:
            name = output.name
            if status == 0 and data:
                self.cache.keep_in_memory(name, data)  # the envelope came back inline
                data = b""  # it is the temp's content, not the call's output
            if status == 0 and (name in self.cache.memory or os.path.lexists(self.cache.path(name))):
                cached[name] = self.cache.add(name, max(output.level, C.VINE_CACHE_LEVEL_WORKFLOW))
            elif status == 0:
                result = C.VINE_RESULT_OUTPUT_MISSING
            else:
                self.cache.unlink(name)  # a failed call leaves no temp behind
        unlinked = self.sandboxes.cleanup(rt)  # no sandbox: only task-level inputs
        self._worker.release(rt)
        self._worker.last_work = time.monotonic()
        end = time.time()
        start = rt.start
        if direct:
            # A direct call queued in the instance (library-queue-depth) starts when the one sent
            # before it ends: its runtime is its own, not its wait, and the manager's measure of
            # how long the library's calls take (which decides how many may queue) stays honest.
            start, inst.direct_end = max(start, inst.direct_end), end
        self._worker.send(
            M.Complete(rt.id, result, code, reason="" if status is not None else "the library died during the call",
                       start=start, end=end, outputs=dict(cached), cached=cached, unlinked=unlinked),
            data or b"",
        )

    async def _execute_call(self, rt: RunningTask, fc: M.CallRef) -> int:
        loop = asyncio.get_running_loop()
        # The library creates this file (new, never truncated: ext4 flushes truncated files at close,
        # which made every call wait on the disk); it becomes the call's "stdout", sent home inline.
        result_path = os.path.join(rt.sandbox, ".vine-stdout")
        rt.start = time.time()
        libs = self.libraries
        inst = libs.get(rt.spec.library_instance or 0)
        if inst is None:
            inst = next((i for i in libs.values() if i.name == fc.library and not i.dead), None)
        fut: asyncio.Future[int | None] = loop.create_future()
        if inst is None or inst.dead or not await inst.wait_ready() or not inst.send_call(rt.id, fc.mode, {
            "function": fc.function, "args": base64.b64decode(fc.args) if fc.args is not None else None,
            "args_file": fc.args_file, "sandbox": rt.sandbox, "result": result_path,
            "output": os.path.join(rt.sandbox, fc.output) if fc.output else None,
        }):
            # The call never started: the manager puts it back in the queue (a new instance, or
            # "missing library" once the library has failed too often). Report after the instance's
            # own end, so the call is not placed in the dead instance again.
            if inst is not None:
                await inst.finished.wait()
            rt.retry = True
            rt.killed_for = C.VINE_RESULT_MISSING_LIBRARY
            return 9
        inst.pending[rt.id] = fut

        def expire(reason: int) -> None:
            if rt.killed_for is None:
                rt.killed_for = reason
            inst.send({"op": "kill", "id": rt.id})
            if not fut.done():
                fut.set_result(-9)

        timers = []
        if rt.spec.time_max:
            timers.append(loop.call_later(float(rt.spec.time_max), expire, C.VINE_RESULT_MAX_WALL_TIME))
        if rt.spec.time_end:
            timers.append(loop.call_later(max(0.0, rt.spec.time_end / 1e6 - time.time()), expire, C.VINE_RESULT_MAX_END_TIME))
        try:
            status = await fut
        except asyncio.CancelledError:
            inst.send({"op": "kill", "id": rt.id})
            raise
        finally:
            for tm in timers:
                tm.cancel()
            inst.pending.pop(rt.id, None)
        inline = inst.results.pop(rt.id, None)
        if inline is not None:
            rt.inline_stdout = inline
        else:
            try:
                rt.stdout_fd = os.open(result_path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass  # no result: the call died (status says how) or never ran
        if status is None:
            rt.killed_for = C.VINE_RESULT_LIBRARY_EXIT
            return 9
        return status

    # -- library instances -----------------------------------------------------------------------------------------
    async def _run_library(self, rt: RunningTask) -> None:
        spec = rt.spec
        lib = spec.library
        assert lib is not None  # task_coroutine sends only library instances here
        inst = LibraryProcess(rt.id, lib.name)
        inst.sandbox = rt.sandbox
        libs = self.libraries
        libs[rt.id] = inst
        server: asyncio.AbstractServer | None = None
        status: int | None = None
        reason = ""
        try:
            if not await self.cache.gather(spec):
                missing = [i.name for i in spec.inputs if i.name not in self.cache.entries]
                reason = f"the library's inputs could not be obtained: {missing}"
            else:
                self.sandboxes.link_inputs(rt)
                address = f"vine-lib-{os.getpid()}-{-rt.id}-{secrets.token_hex(4)}"
                server = await asyncio.get_running_loop().create_unix_server(
                    lambda: LibraryChannel(inst, self._worker.flush), path="\0" + address)
                # Without an environment the library uses the worker's own interpreter (which has
                # cloudpickle); inside one, the environment's python3.
                rt.extra_env = {"VINE_LIBRARY_SOCKET": "@" + address, "VINE_LIBRARY_SLOTS": str(lib.slots),
                                "VINE_PYTHON": None if spec.environments else sys.executable}
                status = await self._worker.execute(rt)
        except asyncio.CancelledError:
            inst.die()
            libs.pop(rt.id, None)
            inst.finished.set()
            return
        except Exception as exc:  # noqa: BLE001 - the worker must survive any library
            log.exception("library %s failed inside the worker", inst.name)
            reason = f"worker error: {exc}"
        finally:
            if server is not None:
                server.close()
        was_ready = inst.ready.done() and inst.ready.result()
        inst.die()
        libs.pop(rt.id, None)
        if rt.id not in self._worker.tasks:
            inst.finished.set()
            return  # killed by the manager (removed, evicted) or the manager went away
        if not reason:
            if rt.killed_for is not None:
                reason = f"killed: {C.result_string(rt.killed_for)}"
            elif inst.error:
                reason = f"the library failed to start (exit status {status}):\n{inst.error.strip()}"
            elif not was_ready:
                reason = f"the library exited with status {status} before it was ready"
            else:
                reason = f"the library exited with status {status}"
        stdout, _cut = self._worker.read_stdout(rt)
        unlinked = self.sandboxes.cleanup(rt)
        self._worker.release(rt)
        self._worker.last_work = time.monotonic()
        self._worker.send(
            M.Complete(rt.id, C.VINE_RESULT_LIBRARY_EXIT, status if status is not None else -1, reason=reason,
                       library=inst.name, start=rt.start, end=time.time(), unlinked=unlinked),
            stdout[-LIBRARY_LOG_TAIL:],
        )
        inst.finished.set()
        conn = self._worker.conn
        if conn is not None:
            try:
                await conn.drain()
            except ConnectionError:
                pass
