"""The library side of FunctionCalls: the process a library instance is, on a worker, outside the manager.

Shipped to workers as a plain script (``.vine_library_runner.py``), next to ``.vine_runner.py``
(core/wire/remote.py), whose result envelopes, argument loading, lean fork and framings it uses: a
library runs in a task's own environment's ``python3`` (``poncho_env``), where ``core`` may not be
installed. So, as remote.py, it imports only the standard library, cloudpickle and remote.py itself:
as ``core.wire.remote`` when it is imported as ``core.wire.library_runner``, and as the file beside
it when it runs as a script::

    python3 .vine_library_runner.py .vine_library      (the library's config: functions, hoisted
      connect to $VINE_LIBRARY_SOCKET                    modules, context, exec mode; core/manager/
      load the config, import, run the context          libraries.py packs it)
      send "ready", then serve "call" / "kill":
        direct: the call runs in this process, one at a time
        fork:   each call runs in a fork of it, at most $VINE_LIBRARY_SLOTS at once; the child's
                result envelope and exit status come back through a pipe of its own

The library socket's framing (length prefix + pickled dict; ``call`` / ``kill`` from the worker,
``ready`` / ``failed`` / ``done`` back) is remote.py's (``encode_library_message``,
``MessageReader``), used by the worker's end too (core/worker/python.py). A ``done`` carries the
call's result envelope (``"result"``) unless it was over INLINE_RESULT bytes and went to the call's
result file.
"""

from __future__ import annotations

import collections
import os
import pickle
import select
import signal
import socket
import sys
import traceback
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import cloudpickle


def _load_runner_beside() -> None:
    """Run as a script: load remote.py from beside this file as the module ``vine_runner``.

    In a sandbox it is ``.vine_runner.py`` (both files are the library's inputs); in the source tree,
    ``remote.py``. Its classes are pickled by value, as they were when remote.py was a library's
    ``__main__``: an ``UpstreamFailure`` a call raised must unpickle on a manager that has no
    ``vine_runner`` module.
    """
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = next((p for p in (os.path.join(here, ".vine_runner.py"), os.path.join(here, "remote.py")) if os.path.exists(p)), None)
    if path is None:
        raise ImportError(f"the library runner needs .vine_runner.py (core/wire/remote.py) beside it in {here}")
    spec = importlib.util.spec_from_file_location("vine_runner", path)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["vine_runner"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)


if TYPE_CHECKING or __package__:
    from .remote import (
        MAGIC,
        READ_CHUNK,
        FramingError,
        MessageReader,
        call_fields,
        encode_library_done,
        encode_library_message,
        encode_outcome,
        fork_lean,
        load_call,
        parse_child_pipe,
        pipe_exit,
        pipe_result,
        read_child_pipe,
        restore_fork_hooks,
        silence_fork_hooks,
        unpack_arguments,
        write_all,
    )
else:
    _load_runner_beside()
    from vine_runner import (  # the same names, from the file beside this one
        MAGIC,
        READ_CHUNK,
        FramingError,
        MessageReader,
        call_fields,
        encode_library_done,
        encode_library_message,
        encode_outcome,
        fork_lean,
        load_call,
        parse_child_pipe,
        pipe_exit,
        pipe_result,
        read_child_pipe,
        restore_fork_hooks,
        silence_fork_hooks,
        unpack_arguments,
        write_all,
    )


# Types the C pickler writes itself, before it would ask cloudpickle's reducer_override: the envelope
# of a return value of exactly one of these is cloudpickle.dumps's bytes from pickle.dumps, without
# the Python of cloudpickle's Pickler (its class, __init__ and dump) per call.
_PLAIN_TYPES = frozenset({type(None), bool, int, float, str, bytes})

CONTEXT_MODULE = "vine_library_context"  # the module load_variable_from_library reads a library's context from


def load_variable_from_library(name: str) -> Any:
    """A variable set up by the library's ``library_context_info`` function."""
    ctx = sys.modules.get(CONTEXT_MODULE)
    if ctx is None or not hasattr(ctx, name):
        raise NameError(f"no variable {name!r} in this library's context; it is set by the dict that the "
                        "library_context_info function returns, and readable only inside a FunctionCall")
    return getattr(ctx, name)


def _hoist(functions: dict[str, Any], hoisted: list[tuple[str, str, Any]]) -> None:
    """Import hoisted modules once and make them (and hoisted functions/classes) globals of each function."""
    names: dict[str, Any] = {}
    for kind, name, obj in hoisted:
        if kind == "module":
            import importlib

            names[name.rsplit(".", 1)[-1] if obj is None else obj] = importlib.import_module(name)
        else:
            names[name] = obj
    names.setdefault("load_variable_from_library", load_variable_from_library)
    for fn in functions.values():
        g = getattr(fn, "__globals__", None)
        if isinstance(g, dict):
            for k, v in names.items():
                g.setdefault(k, v)


INLINE_RESULT = 1 << 20  # results up to this size travel in the "done" message, not through a file
REAP_CHECK = 0.05  # s: how long a library with children waits for events before it looks for ended ones


def _run_call(functions: dict[str, Any], msg: dict[str, Any], inline: bool = False) -> tuple[int, bytes | None]:
    """Run one call in the current process; returns ``(status, inline envelope or None)``.

    A successful call with a temp output (``msg["output"]``) writes its envelope there (status 0).
    Otherwise the envelope goes to ``msg["result"]`` (a file), or with ``inline`` comes back as bytes
    when small: no file to create, write and read per call. A call with a temp output that raised
    has status 1, so the worker keeps no temp and the manager sees the failure without a fetch.
    """
    ok, tb = True, None
    try:
        func = functions.get(msg["function"])
        if func is None:
            raise NameError(f"library has no function {msg['function']!r}; it has {sorted(functions)}")
        paths = msg.get("paths")
        if msg.get("args") is not None:
            args, kwargs = unpack_arguments(cloudpickle.loads(msg["args"]), paths)
        else:
            args, kwargs = load_call(os.path.join(msg["sandbox"], msg["args_file"]), paths)
        value = func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the exception is the call's result
        ok, value, tb = False, exc, traceback.format_exc()
    if ok and type(value) in _PLAIN_TYPES:
        data = pickle.dumps((MAGIC, True, value, None), cloudpickle.DEFAULT_PROTOCOL)
    else:
        ok, data = encode_outcome(ok, value, tb)
    output = msg.get("output")
    if output:
        if ok:
            if msg.get("output_inline") and len(data) <= INLINE_RESULT:
                return 0, data  # the worker keeps it (in memory): no file to create here
            with open(output, "wb") as fh:
                fh.write(data)
            return 0, None
        status = 1
    else:
        status = 0
    if inline and len(data) <= INLINE_RESULT:
        return status, data
    with open(_result_path(msg), "wb") as fh:
        fh.write(data)
    return status, None


def _result_path(msg: dict[str, Any]) -> str:
    """Where a call's result goes when it does not travel inline: the ``result`` it names, or by
    default ``.vine-result-<id>`` in its sandbox (what the worker's fast path reads)."""
    return msg.get("result") or os.path.join(msg["sandbox"], f".vine-result-{msg['id']}")


def send_message(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(encode_library_message(msg))




def library_main(config_path: str) -> int:
    """A library process: load functions once, then serve calls from the worker until it hangs up."""
    address = os.environ["VINE_LIBRARY_SOCKET"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect("\0" + address[1:] if address.startswith("@") else address)
    try:
        with open(config_path, "rb") as fh:
            config = cloudpickle.load(fh)
        functions: dict[str, Any] = config["functions"]
        _hoist(functions, config.get("hoisted", []))
        ctx_module = types.ModuleType(CONTEXT_MODULE)
        sys.modules[CONTEXT_MODULE] = ctx_module
        context = config.get("context")
        if context:
            fn, cargs, ckwargs = (list(context) + [[], {}])[:3]
            variables = fn(*(cargs or []), **(ckwargs or {}))
            if variables is not None:
                if not isinstance(variables, dict):
                    raise TypeError("the library_context_info function must return a dict of variables, "
                                    f"not {type(variables).__qualname__}")
                for k, v in variables.items():
                    setattr(ctx_module, k, v)
    except BaseException:  # noqa: BLE001 - report why the library could not start, then exit
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        sys.stderr.flush()
        try:
            send_message(sock, {"op": "failed", "error": tb})
        except OSError:
            pass
        return 1
    mode = config.get("mode", "fork")
    send_message(sock, {"op": "ready", "functions": sorted(functions), "pid": os.getpid(), "mode": mode})
    _flush_output()  # nothing this process printed may be left in a buffer its forked calls inherit
    return _serve_calls(sock, functions, mode)


def _flush_output() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def _serve_calls(sock: socket.socket, functions: dict[str, Any], mode: str) -> int:
    return _CallLoop(sock, functions, mode).run()


class _CallLoop:
    """A library's serve loop: calls from the worker's socket, run here (direct) or in a fork each.

    A forked call sends its result back through a pipe of its own (the child result pipe's framing,
    :func:`pipe_result` / :func:`pipe_exit`): no file to create, write, read and remove per call.
    Once the child has flushed its output it writes the result and its exit record in one piece,
    and that is when its ``done`` goes to the worker, with the result inline: not when the kernel
    has torn the child down, which is most of what a fork costs. A child that dies without the
    record (killed, ``os._exit``) is reported from ``waitpid`` with its real status. The replies of
    one round leave in one write.

    At most ``VINE_LIBRARY_SLOTS`` (the instance's function slots, set by the worker) forked calls
    run at once; the calls the manager queued in the instance beyond them wait here, and the next
    is forked in the round that reported the one before it, not a manager round trip later.

    Lean on purpose, as the fork server (core/worker/forkserver.py): after a fork every page this
    process writes is a copy-on-write fault (about 2.6 us each on the 2-core test VM, page copy
    included), so it polls with epoll itself, not ``selectors``, and it has no SIGCHLD handler.
    Children are reaped by ``waitpid(-1, WNOHANG)`` at the end of a round that reported one (it
    has written its record, so it is exiting), that saw a pipe end without a record, or that
    timed out (a child that died without its record while a process it started holds its pipe
    open): a signal handler's wake-up, its Python handler and a round of its own were about 40
    such faults a call, a quarter of the library's.
    """

    def __init__(self, sock: socket.socket, functions: dict[str, Any], mode: str) -> None:
        self.sock = sock
        self.functions = functions
        self.mode = mode
        self.home = os.getcwd()
        self.poll = select.epoll()
        self.poll.register(sock.fileno(), select.EPOLLIN)
        self.reader = MessageReader()
        self.children: dict[int, int] = {}  # pid -> call id, until reaped
        self.pipes: dict[int, int] = {}  # read end of a forked call's result pipe (still open) -> its pid
        self.got: dict[int, bytes] = {}  # pid -> what its pipe gave while its records were not whole yet
        self.reported: set[int] = set()  # pids whose "done" went from their pipe: the reap sends nothing
        self.reap_due = False  # a child reported or its pipe ended in this round: reap at its end
        self.replies: list[bytes] = []  # framed, sent together at the end of a round
        # Reads land in these two buffers, made once: a fresh 64 kB bytes object per read (allocated,
        # shrunk, freed) wrote to three or four more heap pages a call, each a copy-on-write fault.
        self.inbox = bytearray(READ_CHUNK)
        self.inbox_view = memoryview(self.inbox)
        self.pipe_buf = bytearray(READ_CHUNK)
        self.pipe_view = memoryview(self.pipe_buf)
        self.slots = max(0, int(os.environ.get("VINE_LIBRARY_SLOTS") or 0))  # 0: no limit (started by hand)
        self.waiting: collections.deque[dict[str, Any]] = collections.deque()  # forked calls beyond the slots
        self.silenced: list[tuple[Any, Any]] = []  # the at-fork hooks kept empty while no call runs here (remote.py)

    def run(self) -> int:
        sock, sock_fd, pipes, poll = self.sock, self.sock.fileno(), self.pipes, self.poll.poll
        inbox = self.inbox
        # A fork-mode library keeps the idle at-fork hooks empty while it serves; a direct one forks
        # only for a call that asks to be forked (fork_lean then), so it leaves them be.
        self.silenced = silence_fork_hooks() if self.mode != "direct" else []
        while True:
            # Children still to reap: wake now and then to look, for one whose pipe another process holds open.
            events = poll(REAP_CHECK if self.children else -1)
            for fd, _ in events:
                if fd == sock_fd:
                    n = sock.recv_into(inbox)
                    if not n:
                        for pid in self.children:
                            _kill_quietly(pid)
                        return 0
                    for msg in self.reader.feed(self.inbox_view[:n]):
                        self.take(msg)
                elif fd in pipes:  # (a reap earlier in this round may have closed it)
                    self.read_pipe(fd)
            if self.reap_due or not events:
                self.reap_due = False
                self.reap()
            if self.replies:
                sock.sendall(b"".join(self.replies))
                self.replies.clear()
            if self.waiting:
                self.start_waiting()

    def take(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "call":
            if (msg.get("mode") or self.mode) == "direct":
                silenced = self.silenced
                restore_fork_hooks(silenced)  # the call's own forks, or its threads, need them
                try:
                    self.run_direct(call_fields(msg))
                finally:
                    if silenced:
                        self.silenced = silence_fork_hooks()
            else:
                self.waiting.append(msg)  # forked at the round's end (start_waiting)
        elif op == "kill":
            for pid, cid in self.children.items():
                if cid == msg["id"]:
                    _kill_quietly(pid)
            for queued in self.waiting:
                if queued["id"] == msg["id"]:
                    self.waiting.remove(queued)
                    self.done(queued["id"], -signal.SIGKILL, None)  # never started
                    break

    def fork(self, msg: dict[str, Any]) -> None:
        pid, pipe_fd = _fork_call(self.sock, self.functions, msg, self.pipes, self.home, self.silenced)
        self.children[pid] = msg["id"]
        self.pipes[pipe_fd] = pid
        self.poll.register(pipe_fd, select.EPOLLIN)

    def done(self, call_id: int, status: int, result: bytes | None) -> None:
        self.replies.append(encode_library_done(call_id, status, result))

    def run_direct(self, msg: dict[str, Any]) -> None:
        """Run a direct call here, in its sandbox (a call on the worker's fast path: the instance's own)."""
        sandbox = msg.setdefault("sandbox", self.home)
        moved = sandbox != self.home
        if moved:
            os.chdir(sandbox)
        try:
            status, inline_result = _run_call(self.functions, msg, inline=True)
        finally:
            if moved:
                os.chdir(self.home)
            _flush_output()
        self.done(msg["id"], status, inline_result)

    def start_waiting(self) -> None:
        """Fork the waiting calls that have a slot, last in a round: every page this process
        writes while a child shares it is copied, so the round's other work (reports, reaps, the
        replies' write) comes first, and after the fork this process only waits."""
        while self.waiting and (not self.slots or len(self.children) - len(self.reported) < self.slots):
            self.fork(self.waiting.popleft())

    def read_pipe(self, fd: int) -> None:
        """One read of a forked call's result pipe: the call is reported once its records are whole."""
        try:
            n = os.readv(fd, (self.pipe_buf,))
        except BlockingIOError:
            return
        pid = self.pipes[fd]
        earlier = self.got.pop(pid, None)
        # Parsed where it was read (only the result is copied out) unless an earlier read began it.
        got = self.pipe_view[:n] if earlier is None else earlier + self.pipe_view[:n]
        try:
            result, code = parse_child_pipe(got)
        except FramingError:
            self.got[pid] = bytes(got)  # more to come, or (nothing read) it ended without its exit record
            if not n:
                self.close_pipe(fd)  # the reap reports it
                self.reap_due = True
            return
        self.close_pipe(fd)  # whole: what the child does now is exit
        self.reported.add(pid)
        self.reap_due = True
        self.done(self.children[pid], code, result)

    def close_pipe(self, fd: int) -> None:
        self.poll.unregister(fd)
        os.close(fd)
        del self.pipes[fd]

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            cid = self.children.pop(pid, None)
            if pid in self.reported:
                self.reported.discard(pid)
                continue
            fd = next((f for f, p in self.pipes.items() if p == pid), None)
            while fd is not None:  # what the child left in its pipe: it wrote everything before it exited
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    chunk = b""  # something the call started still holds the write end: what is there is all
                if not chunk:
                    self.close_pipe(fd)
                    break
                self.got[pid] = self.got.get(pid, b"") + chunk
            result = read_child_pipe(self.got.pop(pid, b""))[0]
            if cid is not None:
                self.done(cid, os.waitstatus_to_exitcode(status), result)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _fork_call(sock: socket.socket, functions: dict[str, Any], msg: dict[str, Any], fds: Iterable[int],
               home: str, silenced: list[tuple[Any, Any]]) -> tuple[int, int]:
    """Fork a child that runs call ``msg``: ``(its pid, the read end of its result pipe)``.

    ``fds``: the library's descriptors the child lets go of (the other children's result pipes);
    ``home``: the library's sandbox (a call's default); ``silenced``: the at-fork hooks the library
    keeps empty (given back in the child). The child sends its result (up to INLINE_RESULT bytes;
    a larger one goes to the call's result file) and its exit status through the pipe (see _CallLoop).
    """
    # No flush of sys.stdout and sys.stderr here (ten pages written a call): this process writes to
    # them only in direct calls, which flush after themselves (run_direct), and before it serves.
    rfd, wfd = os.pipe()
    pid = os.fork() if silenced else fork_lean()  # silenced: the idle hooks are empty already
    if pid:
        os.close(wfd)
        os.set_blocking(rfd, False)
        return pid, rfd
    code, data = 1, None
    try:
        restore_fork_hooks(silenced)  # the call's own forks must run them
        # The library has no signal handlers or wake-up pipe to undo (leave_parent_loop's other work).
        os.close(sock.fileno())
        os.close(rfd)
        for fd in fds:
            os.close(fd)
        msg = call_fields(msg)
        sandbox = msg.setdefault("sandbox", home)
        if sandbox != home:
            os.chdir(sandbox)
        code, data = _run_call(functions, msg, inline=True)
    except BaseException:  # noqa: BLE001 - a child must never return into the library's loop
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            try:  # flushed: the result and the exit record in one write, so one read has both
                write_all(wfd, (pipe_result(data) if data is not None else b"") + pipe_exit(code))
                os.close(wfd)
            except OSError:
                pass
            os._exit(code)
    return 0, 0  # not reached


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        return library_main(argv[1])
    sys.stderr.write("usage: .vine_library_runner.py CONFIG\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
