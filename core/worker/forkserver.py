"""A warm Python process on each worker that forks a fresh child per PythonTask.

::

    worker (asyncio)                      fork server (this module's main)        child per task
    ────────────────                      ───────────────────────────────         ──────────────
    ForkServer.spawn(request) ──json──►   fork() ───────────────────────────────► own process group,
              ◄── {"id", "pid"} ───────   (cloudpickle and core already            sandbox cwd, task env,
              ◄── {"id", "status",        imported, so no interpreter start)      stdout file; runs it,
                   "result"} ──────────   result pipe ◄──────────────────────────── sends its result
                                          SIGCHLD → waitpid → status               and _exit()s

Each task still gets its own process (a crash, a leaked global, a ``sys.exit`` stay with it), but it
skips the 50–100 ms an interpreter takes to start and import cloudpickle. The server never *calls*
user code, so every child starts from the same clean state.

What makes a small task cost about a fork (all optional in a request, each falling back to files):

- the task's function is unpickled once per worker, by the server, keyed by its content-named cache
  file (``function_key``/``function_path``): a child finds it loaded, with the modules it refers to
  imported (a by-reference function's module used to be imported again by every child);
- small arguments come inside the request (``args_inline``, base64) instead of as a sandbox file;
- the task's environment travels as its difference to the server's own (``env``: what to set,
  ``unset``: what to remove), which the server keeps as it started: a child changes a few
  variables instead of walking all of ``os.environ`` (every page such a walk touches is a
  copy-on-write fault in the child, ~5 µs each on the CI VM);
- with ``result_inline`` the child sends its result (the output file's bytes) back through a pipe the server reads,
  and the server hands it to the worker with the exit status (``"result"``, base64), so no result
  file is written (a result over ``INLINE_RESULT_LIMIT`` still goes to the file). The child's last
  record on that pipe is the status it is about to exit with, once its output is flushed: the
  server reports the task then, instead of after the kernel has torn the child down (a few ms of
  every small task's latency); a child that dies without that record is reported from ``waitpid``.

The channel is a socketpair inherited by the server (never its stdout, which children reuse); its
framing (a JSON object per line) and that of the child's result pipe are described, encoded and
checked in core.wire.remote (``encode_fork_line``, ``decode_fork_request``, ``decode_fork_reply``,
``pipe_result``/``pipe_exit``/``read_child_pipe``): a line that is not one raises ``FramingError``.
If the server dies, pending tasks fail with status -9 and the next task starts a new server.

A task may name *warm imports* (``PythonTask.set_warm_imports``): modules the server imports once,
before its first fork that asks for them, and keeps, so every later child finds them loaded (a
framework such as Parsl costs about a second to import). A module that fails to import here is
left for the child to import, which then reports the real error as the task's own.
"""

from __future__ import annotations

import _signal
import base64
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable

from ..wire.remote import decode_fork_reply, encode_fork_line
from .children import kill_group, reap_child

if TYPE_CHECKING:
    # Imported only where the worker's side uses them (ForkServer): the server process runs this
    # module too, and asyncio alone is ~9 MB of its ~23 (without Parsl), which every fork maps
    # and every child's exit unmaps (a bare fork + exit: 0.7 + 1.7 ms at 17 MB, 1.4 + 3.2 ms at
    # 30 MB on the CI VM).
    import asyncio
    import subprocess

INLINE_RESULT_LIMIT = 1 << 20  # larger results go to the task's result file
FUNCTION_CACHE_MAX = 128  # functions kept unpickled in the server (least recently used dropped first)
FUNCTION_CACHE_FILE_MAX = 1 << 20  # a bigger pickled function (a large closure) is loaded by each child
_CHANNEL_LIMIT = 4 * INLINE_RESULT_LIMIT  # longest line on the channel (a base64 result and its header)

# --- the server process ------------------------------------------------------------------------------


def serve(fd: int) -> int:  # noqa: C901 - the fork server's select loop: one branch per request and child event
    """Fork server loop over the inherited socket ``fd``; returns when the worker hangs up."""
    from ..wire import remote as _remote

    sock = socket.socket(fileno=fd)
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(rfd, selectors.EVENT_READ)
    children: dict[int, Any] = {}
    base_env = dict(os.environ)  # requests' env is a difference to this (module docstring)
    warmed: set[str] = set()
    functions: dict[str, Any] = {}  # function_key -> the unpickled function (insertion order = recency)
    results: dict[int, tuple[int, bytearray]] = {}  # child pid -> (read end of its result pipe, bytes so far)
    at_eof: set[int] = set()  # result pipes read to their end (no longer watched), until their child is reaped
    reported: set[int] = set()  # children whose end was reported from their pipe (their reap sends nothing)
    buf = b""
    outgoing: list[bytes] = []  # replies of one select round, sent in one write (one wake-up of the worker)

    def reply(msg: dict[str, Any]) -> None:
        outgoing.append(_remote.encode_fork_line(msg))

    def read_result(pid: int, final: bool) -> None:
        fd, got = results[pid]
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                # The child closed its end (it is exiting): stop watching the pipe now. Left
                # registered, an at-EOF pipe is readable on every select until the SIGCHLD is
                # reaped, and the loop spun on empty reads meanwhile (seen with strace).
                if fd not in at_eof:
                    at_eof.add(fd)
                    sel.unregister(fd)
                    if not final:
                        report_early(pid, got)
                break
            got += chunk
        if final:
            if fd in at_eof:
                at_eof.discard(fd)
            else:
                sel.unregister(fd)
            os.close(fd)
            del results[pid]

    def report_early(pid: int, got: bytearray) -> None:
        # A child that closed its pipe after its exit record has finished (output flushed, result
        # sent): report it now, not after the kernel has torn it down; the reap is then silent.
        result, code = _remote.read_child_pipe(bytes(got))
        tid = children.get(pid)
        if code is None or tid is None:
            return
        reported.add(pid)
        msg: dict[str, Any] = {"id": tid, "status": code}
        if result is not None:
            msg["result"] = base64.b64encode(result).decode()
        reply(msg)

    def reap() -> None:
        while children:
            try:
                ended = reap_child()
            except ChildProcessError:
                return
            if ended is None:
                return
            pid, code = ended
            tid = children.pop(pid, None)
            msg: dict[str, Any] = {"id": tid, "status": code}
            if pid in results:
                # The child wrote everything before it exited: what is not read yet is in the pipe.
                got = results[pid][1]
                read_result(pid, final=True)
                result, _ = _remote.read_child_pipe(bytes(got))
                if result is not None:
                    msg["result"] = base64.b64encode(result).decode()
            if pid in reported:
                reported.discard(pid)
            elif tid is not None:
                reply(msg)

    def flush() -> None:
        if outgoing:
            sock.sendall(b"".join(outgoing))
            outgoing.clear()

    while True:
        # The worker's requests last: the ends seen in this round are sent before its forks (each
        # a millisecond or more), so the worker frees those slots while this process forks.
        for key, _ in sorted(sel.select(), key=lambda event: event[0].fileobj is sock):
            if key.data is not None:
                if key.data in results:  # (a reap earlier in this batch may have closed it)
                    read_result(key.data, final=False)
            elif key.fileobj is sock:
                flush()
                data = sock.recv(1 << 20)
                if not data:
                    for pid in children:
                        kill_group(pid)
                    return 0
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    request = _remote.decode_fork_request(line)  # a bad line ends the server (FramingError)
                    loaded = len(warmed), len(functions)
                    _warm_imports(request.get("python") or {}, warmed)
                    request["function_object"] = _load_function(request, functions)
                    if loaded != (len(warmed), len(functions)):
                        _restore_environ(base_env)  # an import may have set variables: children start from base_env
                    result_fd = -1
                    if request.get("result_inline"):
                        result_fd, request["result_fd"] = os.pipe()
                        request["result_limit"] = INLINE_RESULT_LIMIT
                        os.set_blocking(result_fd, False)
                    try:
                        pid = _fork_task(request, sock, rfd, wfd, _remote.forked_child_main, result_fd, _remote.fork_lean)
                    finally:
                        if result_fd >= 0:
                            os.close(request["result_fd"])  # the child's end; ours reads
                    children[pid] = request["id"]
                    if result_fd >= 0:
                        results[pid] = (result_fd, bytearray())
                        sel.register(result_fd, selectors.EVENT_READ, pid)
                    reply({"id": request["id"], "pid": pid})
            else:
                try:
                    os.read(rfd, 4096)
                except BlockingIOError:
                    pass
                reap()
        flush()


def _warm_imports(python: dict[str, Any], warmed: set[str]) -> None:
    """Import (once) the modules a task asked to find already loaded in its fork."""
    for name in python.get("warm_imports") or ():
        if name in warmed:
            continue
        warmed.add(name)
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the child imports it again and reports the real error
            pass


def _restore_environ(base: dict[str, str]) -> None:
    """Make ``os.environ`` what the server started with (requests carry their env relative to it)."""
    if dict(os.environ) == base:
        return
    for key in [k for k in os.environ if k not in base]:
        del os.environ[key]
    for key, value in base.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def env_difference(base: dict[str, str], env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` as a fork request carries it: (variables to set, names to remove) relative to ``base``."""
    changed = {k: v for k, v in env.items() if base.get(k) != v}
    return changed, [k for k in base if k not in env]


def _load_function(request: dict[str, Any], functions: dict[str, Any]) -> Any:
    """The task's function, unpickled here once per content key (None: the child loads it itself).

    Unpickling imports the modules the function refers to but runs none of the task's code. If it
    fails, the child loads it again and reports the real error as the task's own. A function whose
    pickle is over FUNCTION_CACHE_FILE_MAX is not kept (nor is it loaded here).
    """
    key = request.get("function_key")
    path = request.get("function_path")
    if not key or not path:
        return None
    func = functions.pop(key, None)
    if func is None:
        import cloudpickle

        try:
            if os.path.getsize(path) > FUNCTION_CACHE_FILE_MAX:
                return None  # kept here it would make every later fork copy (and every child free) it
            with open(path, "rb") as fh:
                func = cloudpickle.load(fh)
        except Exception:  # noqa: BLE001 - the child loads it again and reports the real error
            return None
        while len(functions) >= FUNCTION_CACHE_MAX:
            functions.pop(next(iter(functions)))
    functions[key] = func  # now the most recently used
    return func


def _fork_task(request: dict[str, Any], sock: socket.socket, rfd: int, wfd: int, body: Callable[[dict[str, Any]], int],
               result_fd: int = -1, fork: Callable[[], int] = os.fork) -> int:
    # Everything the server holds so far moves to the collector's permanent generation: a child's
    # collections then skip it instead of touching (and so copying) every page of the warm heap.
    gc.freeze()
    pid = fork()
    if pid:
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
        except (PermissionError, ProcessLookupError):
            pass
        return pid
    code = 1
    try:
        os.setpgid(0, 0)
        # The C functions, not signal.signal's and socket.close's Python wrappers: every line of
        # Python a child runs writes to (so copies) the pages of the code it runs.
        _signal.set_wakeup_fd(-1)
        _signal.signal(signal.SIGCHLD, _signal.SIG_DFL)
        _signal.signal(signal.SIGINT, _signal.SIG_DFL)
        os.close(sock.fileno())  # the socket object is never used again here
        os.close(rfd)
        os.close(wfd)
        if result_fd >= 0:
            os.close(result_fd)  # the server's end of this child's result pipe
        code = body(request)
    except BaseException:  # noqa: BLE001 - a child must never return into the server loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
    return 0  # not reached


# --- the worker's side ---------------------------------------------------------------------------------


class ForkServer:
    """The worker's handle on its fork server (started on first use, restarted if it dies)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._listener: asyncio.Task[None] | None = None
        self._started: dict[int, asyncio.Future[int]] = {}
        self._exited: dict[int, asyncio.Future[int]] = {}
        self._results: dict[int, bytes] = {}  # inline results (output file bytes) of exited tasks, until taken
        self._lock: asyncio.Lock | None = None
        self._base_env: dict[str, str] = {}  # the environment the server was started with

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._writer is not None

    async def _start(self) -> None:
        import asyncio
        import subprocess

        parent, child = socket.socketpair()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._base_env = env
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "core.worker.forkserver", str(child.fileno())],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                start_new_session=True,
            )
        finally:
            child.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent, limit=_CHANNEL_LIMIT)
        self._listener = asyncio.create_task(self._listen(reader))

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        import asyncio
        import subprocess

        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                tid, pid, status, result = decode_fork_reply(line)  # FramingError (a ValueError) ends the channel
                if pid is not None:
                    fut = self._started.pop(tid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(pid)
                else:
                    fut = self._exited.pop(tid, None)
                    if fut is not None and not fut.done():
                        if result is not None:
                            self._results[tid] = result
                        assert status is not None
                        fut.set_result(status)
        except (OSError, ValueError, asyncio.CancelledError):
            pass
        finally:
            self._writer = None
            for futs in (self._started, self._exited):
                for fut in futs.values():
                    if not fut.done():
                        fut.set_result(-signal.SIGKILL)
                futs.clear()
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
            if self._proc is not None:
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass

    def take_result(self, task_id: int) -> bytes | None:
        """The result bytes an exited task sent inline (None: it wrote its result file, or none)."""
        return self._results.pop(task_id, None)

    async def spawn(self, task_id: int, sandbox: str, env: dict[str, str], stdout: str,
                    python: dict[str, Any], **fast: Any) -> tuple[int, asyncio.Future[int]]:
        """Start one task; returns its pid (also its process group) and a future of its exit status.

        ``env`` is the task's whole environment (it is sent as its difference to the server's).

        ``fast`` holds the optional request fields of the module docstring (``function_key``,
        ``function_path``, ``result_inline``); arguments inline are ``python["args_inline"]``.
        """
        import asyncio

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.running:
                await self._start()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        self._started[task_id] = started
        self._exited[task_id] = exited
        changed, unset = env_difference(self._base_env, env)
        request = {"id": task_id, "sandbox": sandbox, "env": changed, "unset": unset, "stdout": stdout, "python": python, **fast}
        assert self._writer is not None
        self._writer.write(encode_fork_line(request))
        try:
            pid = await asyncio.shield(started)
        except asyncio.CancelledError:
            # Killed before we knew its pid: kill it as soon as the server tells us who it is.
            started.add_done_callback(lambda f: kill_group(f.result()))
            raise
        if pid < 0:
            raise OSError("the fork server died before starting the task")
        return pid, exited

    def close(self) -> None:
        import subprocess

        if self._writer is not None:
            self._writer.close()
        if self._listener is not None:
            self._listener.cancel()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1])))
