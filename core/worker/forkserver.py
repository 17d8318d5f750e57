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
  ``unset``: what to remove), which the server keeps as it started; the server makes the whole
  environment once per distinct difference (``PreparedEnvironments``) and a child adopts it with
  two stores instead of setting each variable (every page a child writes is a copy-on-write
  fault, ~5 µs each on the CI VM, and a glibc ``setenv`` per variable wrote ~5 of them);
- with ``result_inline`` the child sends its result (the output file's bytes) back through a pipe the server reads,
  and the server hands it to the worker with the exit status (``"result"``, base64), so no result
  file is written (a result over ``INLINE_RESULT_LIMIT`` still goes to the file). The child's last
  record on that pipe is the status it is about to exit with, once its output is flushed, written
  with the result in one write: the server reports the task as soon as that record is in, instead
  of after the kernel has torn the child down (a few ms of every small task's latency); a child
  that dies without that record is reported from ``waitpid``.

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
import gc
import importlib
import os
import select
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable

from ..wire.remote import READ_CHUNK, decode_fork_reply, encode_fork_line, leave_parent_loop
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


# Set by the worker for the server's own start only: the dynamic linker then binds every symbol at
# exec, so a child never runs its lazy binding (each first call of a C function through the PLT writes
# the GOT, a copy-on-write fault in every child: ~14 of a small task's ~300). The server removes it
# from its environment at once, so neither a task nor what it runs sees it.
BIND_NOW = "LD_BIND_NOW"


def serve(fd: int, started_with: tuple[str, ...] | list[str] = ()) -> int:
    """Fork server loop over the inherited socket ``fd``; returns when the worker hangs up.

    ``started_with``: environment variables the worker added for this process's start only (see
    BIND_NOW), removed here before anything records or forks the environment.
    """
    for name in started_with:
        os.environ.pop(name, None)
    return _Server(fd).run()


class _Server:
    """The fork server's state and its epoll loop.

    Lean on purpose: after every fork, each page this process writes is a copy-on-write fault (the
    child still maps it), so the Python run per task here costs in proportion to the code and
    objects it touches. Hence epoll itself rather than ``selectors``, one read per readable pipe
    rather than reading until ``BlockingIOError``, and replies formatted by ``fork_started_line`` /
    ``fork_ended_line`` rather than ``json.dumps`` (the same bytes).
    """

    def __init__(self, fd: int) -> None:
        from ..wire import remote

        self.remote = remote
        self.sock = socket.socket(fileno=fd)
        self.sock_fd = fd
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        signal.set_wakeup_fd(self.wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop
        self.poll = select.epoll()
        self.poll.register(fd, select.EPOLLIN)
        self.poll.register(self.rfd, select.EPOLLIN)
        self.children: dict[int, int] = {}  # child pid -> task id
        self.base_env = dict(os.environ)  # requests' env is a difference to this (module docstring)
        self.environments = PreparedEnvironments(self.base_env)
        self.warmed: set[str] = set()
        self.functions: dict[str, Any] = {}  # function_key -> the unpickled function (insertion order = recency)
        self.pipes: dict[int, int] = {}  # read end of a child's result pipe (still open) -> child pid
        self.got: dict[int, bytes | bytearray] = {}  # child pid -> what its pipe has given so far
        self.reported: set[int] = set()  # children whose end was reported from their pipe (the reap sends nothing)
        self.buf = b""
        self.outgoing: list[bytes] = []  # replies of one round, sent in one write (one wake-up of the worker)

    def run(self) -> int:
        rfd, sock_fd = self.rfd, self.sock_fd
        while True:
            requests = False
            # Ends first, the worker's requests last: the ends seen in this round are sent before its
            # forks (each a millisecond or more), so the worker frees those slots while this forks.
            for fd, events in self.poll.poll():
                if fd == sock_fd:
                    requests = True
                elif fd == rfd:
                    try:
                        os.read(rfd, 4096)
                    except BlockingIOError:
                        pass
                    self.reap()
                elif fd in self.pipes:  # (a reap earlier in this round may have closed it)
                    self.read_pipe(fd, events & select.EPOLLHUP)
            if requests:
                self.flush()
                data = self.sock.recv(READ_CHUNK)
                if not data:
                    for pid in self.children:
                        kill_group(pid)
                    return 0
                self.take_requests(data)
            self.flush()

    def flush(self) -> None:
        if self.outgoing:
            self.sock.sendall(b"".join(self.outgoing))
            self.outgoing.clear()

    def take_requests(self, data: bytes) -> None:
        buf = self.buf + data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            self.start(self.remote.decode_fork_request(line))  # a bad line ends the server (FramingError)
        self.buf = buf

    def start(self, request: dict[str, Any]) -> None:
        """Fork one request's child (after its warm imports and function are loaded here)."""
        loaded = len(self.warmed), len(self.functions)
        _warm_imports(request.get("python") or {}, self.warmed)
        request["function_object"] = _load_function(request, self.functions)
        if loaded != (len(self.warmed), len(self.functions)):
            _restore_environ(self.base_env)  # an import may have set variables: children start from base_env
        request["environ"] = self.environments.get(request["env"], request["unset"])
        result_fd = -1
        if request.get("result_inline"):
            result_fd, request["result_fd"] = os.pipe()
            request["result_limit"] = INLINE_RESULT_LIMIT
            os.set_blocking(result_fd, False)
        try:
            pid = _fork_task(request, self.sock, self.rfd, self.wfd, self.remote.forked_child_main, result_fd,
                             self.remote.fork_lean)
        finally:
            if result_fd >= 0:
                os.close(request["result_fd"])  # the child's end; ours reads
        tid = request["id"]
        self.children[pid] = tid
        if result_fd >= 0:
            self.pipes[result_fd] = pid
            self.got[pid] = b""
            self.poll.register(result_fd, select.EPOLLIN)
        self.outgoing.append(self.remote.fork_started_line(tid, pid))

    def read_pipe(self, fd: int, hung_up: int = 0) -> None:
        """One read of a child's result pipe; once its exit record is in (or the pipe is at its end),
        report the child if it said how it ended.

        ``hung_up`` (epoll's HUP: every writer has closed its end): read to the end now, which never
        blocks, rather than in more rounds of the loop.
        """
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        pid = self.pipes[fd]
        got = self.got[pid]
        while chunk:
            if type(got) is bytearray:
                got += chunk
            elif got:
                got = bytearray(got)  # a result in many reads gathers in one buffer
                got += chunk
            else:
                got = chunk  # the usual case, everything in one read: kept as it is, no copy
            if self.remote.child_pipe_ended(got):
                break  # its last record is in: the end of the pipe is not waited for
            if not hung_up:
                self.got[pid] = got
                return
            chunk = os.read(fd, READ_CHUNK)
        self.got[pid] = got
        # A child whose exit record is there has finished (output flushed, result sent), so it is
        # reported now, not after the kernel has torn it down. (Closing our end first is harmless:
        # the child writes nothing after that record.)
        self.close_pipe(fd)
        result, code = self.remote.read_child_pipe(bytes(got) if type(got) is bytearray else got)
        tid = self.children.get(pid)
        if code is not None and tid is not None:
            self.reported.add(pid)
            self.got.pop(pid, None)
            self.outgoing.append(self.remote.fork_ended_line(tid, code, result))

    def close_pipe(self, fd: int) -> None:
        self.poll.unregister(fd)
        os.close(fd)
        del self.pipes[fd]

    def drain_pipe(self, pid: int) -> None:
        """Read what an ended child left in its pipe (it wrote everything before it exited)."""
        fd = next((f for f, p in self.pipes.items() if p == pid), None)
        if fd is None:
            return
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                break  # something the child started still holds the write end: what is there is all
            if not chunk:
                break
            self.got[pid] += chunk
        self.close_pipe(fd)

    def reap(self) -> None:
        while self.children:
            try:
                ended = reap_child()
            except ChildProcessError:
                return
            if ended is None:
                return
            pid, code = ended
            tid = self.children.pop(pid, None)
            if pid in self.reported:
                self.reported.discard(pid)
                continue
            self.drain_pipe(pid)
            got = self.got.pop(pid, None)
            result = self.remote.read_child_pipe(bytes(got))[0] if got else None
            if tid is not None:
                self.outgoing.append(self.remote.fork_ended_line(tid, code, result))


class PreparedEnvironments:
    """Each distinct task environment the server is asked for, made once, for children to adopt whole.

    A child used to apply its request's difference itself (``env``, ``unset``): ten variables for
    a plain task (``CORES``, ``TMPDIR``, ...), each an ``os.environ`` store and a glibc ``setenv``,
    whose mallocs write to the heap the child shares with the server: ~50 copy-on-write faults,
    more than the call's own work. Here the whole environment (the server's starting one, less
    ``unset``, plus ``env``) is built once per distinct request: a NUL-terminated ``char *`` array
    for libc's ``environ`` and the bytes dict ``os.environ`` and ``os.environb`` share. A child
    points ``environ`` at the array and gives both the dict: two stores, no allocation. What the
    child changes later (a task's own ``os.environ[...] = ...``: glibc copies an ``environ`` it did
    not allocate before it grows it) is its own copy-on-write copy; the server's never changes.

    :meth:`get` returns ``(pointer, address, dict)`` for ``core.wire.remote.forked_child_main``, or
    None (the child applies the difference itself) where this cannot be done exactly: no ctypes,
    an ``os`` whose environ is not laid out as CPython's POSIX one, or a name or value the C
    environment cannot hold as given (a NUL, an ``=`` in a name, an empty name), so that such a
    task fails in its child as it always has.
    """

    MAX = 16  # kept (oldest dropped first); a worker's tasks have a few allocations and sandboxes

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.entries: dict[tuple[Any, ...], tuple[Any, int, dict[bytes, bytes]] | None] = {}
        self.arrays: dict[tuple[Any, ...], Any] = {}  # the ctypes array behind each entry's address
        self.pointer: Any = None
        environb = getattr(os, "environb", None)
        if environb is None or getattr(os.environ, "_data", None) is not getattr(environb, "_data", 0) \
                or type(os.environ._data) is not dict:  # type: ignore[attr-defined]
            return
        try:
            import ctypes

            self.pointer = ctypes.c_void_p.in_dll(ctypes.CDLL(None), "environ")
        except (ImportError, OSError, ValueError):
            self.pointer = None

    def get(self, env: dict[str, str], unset: list[str]) -> tuple[Any, int, dict[bytes, bytes]] | None:
        if self.pointer is None:
            return None
        key = (*env.items(), None, *unset)
        try:
            return self.entries[key]
        except KeyError:
            pass
        while len(self.entries) >= self.MAX:
            oldest = next(iter(self.entries))
            del self.entries[oldest]
            self.arrays.pop(oldest, None)
        made = self._make(env, unset)
        if made is None:
            self.entries[key] = None
            return None
        array, address, data = made
        self.arrays[key] = array
        entry = self.entries[key] = (self.pointer, address, data)
        return entry

    def _make(self, env: dict[str, str], unset: list[str]) -> tuple[Any, int, dict[bytes, bytes]] | None:
        import ctypes

        gone = set(unset)
        whole = {k: v for k, v in self.base.items() if k not in gone}
        whole.update(env)
        encodekey, encodevalue = os.environ.encodekey, os.environ.encodevalue  # type: ignore[attr-defined]
        data: dict[bytes, bytes] = {}
        try:
            for k, v in whole.items():
                if type(k) is not str or type(v) is not str or not k or "=" in k or "\0" in k or "\0" in v:
                    return None
                data[encodekey(k)] = encodevalue(v)
        except UnicodeError:
            return None  # (putenv in the child raises the same, as the task's own failure)
        strings = [k + b"=" + v for k, v in data.items()]
        array = (ctypes.c_char_p * (len(strings) + 1))(*strings)  # (the last is NULL; the array keeps the strings)
        return array, ctypes.addressof(array), data


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
        # (result_fd: the server's end of this child's result pipe)
        leave_parent_loop(sock, rfd, wfd, *((result_fd,) if result_fd >= 0 else ()))
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # the server ignores it; a task does not
        code = body(request)
    except BaseException:  # noqa: BLE001 - a child must never return into the server loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
    return 0  # not reached


# --- the worker's side ---------------------------------------------------------------------------------


class _Replies:
    """The worker's end of the channel as an asyncio protocol: each reply line is handled in the
    loop turn that reads it (a StreamReader and a listening task took two turns per reply)."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.transport: Any = None
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        try:
            for line in lines:
                self.server._reply(*decode_fork_reply(line))
            if len(self.buf) > _CHANNEL_LIMIT:
                raise ValueError(f"fork-server reply line over {_CHANNEL_LIMIT} bytes")
        except ValueError:  # FramingError is one: the channel is lost
            self.transport.abort()

    def eof_received(self) -> None:
        return None  # the transport closes, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._channel_lost(self)

    def pause_writing(self) -> None:
        pass  # requests are small and the server reads them promptly; nothing waits on a drain

    def resume_writing(self) -> None:
        pass


class ForkRequest:
    """A request sent by :meth:`ForkServer.start`: its two ends are called back from the channel.

    ``started(pid)`` once the server names the child, ``ended(status)`` once it has exited (its
    inline result, if any, is in ``take_result``). ``ended(None)``: the server was lost before it
    named the child, which never ran. ``cancel()`` (Worker.kill before the pid is known): the
    child is killed as soon as it is named, and neither end is called.
    """

    __slots__ = ("started", "ended", "cancelled", "pid")

    def __init__(self, started: Callable[[int], None], ended: Callable[[int | None], None]) -> None:
        self.started = started
        self.ended = ended
        self.cancelled = False
        self.pid = 0

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class ForkServer:
    """The worker's handle on its fork server (started on first use, restarted if it dies)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: _Replies | None = None
        self._started: dict[int, asyncio.Future[int]] = {}
        self._exited: dict[int, asyncio.Future[int]] = {}
        self._requests: dict[int, ForkRequest] = {}  # requests sent by start(), until their child's end
        self._results: dict[int, bytes] = {}  # inline results (output file bytes) of exited tasks, until taken
        self._lock: asyncio.Lock | None = None
        self._base_env: dict[str, str] = {}  # the environment the server was started with
        # The last environment asked for and its difference to _base_env: a worker hands the same
        # (read-only, shared) dict to its plain tasks of one sandbox and allocation, so most tasks
        # skip the walk over all its variables.
        self._last_env: tuple[dict[str, str] | None, dict[str, str], list[str]] = (None, {}, [])

    @property
    def running(self) -> bool:
        # The channel is dropped (_channel_lost) when the server's end closes, which its death does:
        # no waitpid per task to ask the same. (A death not seen yet fails the request's spawn,
        # whose task then runs in a fresh interpreter, as it would have after the waitpid.)
        return self._channel is not None and self._proc is not None and self._proc.returncode is None

    async def _start(self) -> None:
        import asyncio
        import subprocess

        parent, child = socket.socketpair()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._base_env = env
        self._last_env = (None, {}, [])
        added = [] if BIND_NOW in env else [BIND_NOW]  # (a user's own setting stays, and stays theirs)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "core.worker.forkserver", str(child.fileno()), *added],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                env={**env, **{name: "1" for name in added}}, start_new_session=True,
            )
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        _, self._channel = await loop.create_unix_connection(lambda: _Replies(self), sock=parent)

    def _reply(self, tid: int, pid: int | None, status: int | None, result: bytes | None) -> None:
        req = self._requests.get(tid)
        if req is not None:
            if pid is not None:
                req.pid = pid
                if req.cancelled:
                    kill_group(pid)  # killed before it knew the pid
                else:
                    req.started(pid)
                return
            del self._requests[tid]
            if not req.cancelled:
                if result is not None:
                    self._results[tid] = result
                assert status is not None
                req.ended(status)
            return
        if pid is not None:
            fut = self._started.pop(tid, None)
            if fut is not None:
                if fut.cancelled():
                    kill_group(pid)  # its spawn was cancelled before it knew the pid
                elif not fut.done():
                    fut.set_result(pid)
            return
        fut = self._exited.pop(tid, None)
        if fut is not None and not fut.done():
            if result is not None:
                self._results[tid] = result
            assert status is not None
            fut.set_result(status)

    def _channel_lost(self, channel: _Replies) -> None:
        import subprocess

        if channel is not self._channel:
            return
        self._channel = None
        requests, self._requests = self._requests, {}
        for req in requests.values():
            if not req.cancelled:
                req.ended(-signal.SIGKILL if req.pid else None)
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
        if not self.running:
            async with self._lock:
                if not self.running:
                    await self._start()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[int] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        self._started[task_id] = started
        self._exited[task_id] = exited
        assert self._channel is not None
        self._write_request(self._channel, task_id, sandbox, env, stdout, python, fast)
        # Cancelled while waiting (the task was killed before its pid came), the future is cancelled
        # too, and _reply kills the child as soon as the server names it.
        pid = await started
        if pid < 0:
            raise OSError("the fork server died before starting the task")
        return pid, exited

    def start(self, task_id: int, sandbox: str, env: dict[str, str], stdout: str, python: dict[str, Any],
              started: Callable[[int], None], ended: Callable[[int | None], None], **fast: Any) -> ForkRequest | None:
        """:meth:`spawn` without a coroutine, for a server already running: the request is written
        now and its ends are called back (:class:`ForkRequest`); None if the server is not running
        (``spawn`` starts it)."""
        channel = self._channel
        if channel is None or not self.running:
            return None
        req = self._requests[task_id] = ForkRequest(started, ended)
        self._write_request(channel, task_id, sandbox, env, stdout, python, fast)
        return req

    def _write_request(self, channel: _Replies, task_id: int, sandbox: str, env: dict[str, str], stdout: str,
                       python: dict[str, Any], fast: dict[str, Any]) -> None:
        """Send one request line; the environment goes as its difference to the server's."""
        last, changed, unset = self._last_env
        if env is not last:
            changed, unset = env_difference(self._base_env, env)
            self._last_env = (env, changed, unset)
        channel.transport.write(encode_fork_line({"id": task_id, "sandbox": sandbox, "env": changed, "unset": unset,
                                                  "stdout": stdout, "python": python, **fast}))

    def close(self) -> None:
        import subprocess

        if self._channel is not None:
            self._channel.transport.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


if __name__ == "__main__":
    sys.exit(serve(int(sys.argv[1]), sys.argv[2:]))
