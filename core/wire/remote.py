"""What runs on a worker on behalf of Python tasks, outside the manager, and what a library uses of it.

This module imports only the standard library and cloudpickle, on purpose: it is shipped as a plain
script (``.vine_runner.py``) into sandboxes whose ``python3`` comes from a task's own environment,
where ``core`` may not be installed. The worker's fork server imports it as ``core.wire.remote``.
A library instance runs core/wire/library_runner.py (shipped beside it as
``.vine_library_runner.py``), which takes its envelopes, argument loading, lean fork and framings
from here.

::

    PythonTask                                   FunctionCall (core/wire/library_runner.py)
    ──────────                                   ────────────
    fork server child, or                        library process (one per worker, warm imports)
    `python3 .vine_runner.py task F A O S`         ├─ direct: the call runs in the library process
      load F (function), A (args),                 └─ fork:   the call runs in a fork of it
      run, write O (result envelope)             the envelope comes back in the library's "done"

A PythonTask's output file holds exactly ``cloudpickle.dumps(return_value)``, as TaskVine's does, so
a consumer written for TaskVine ``cloudpickle.load()``s it. When the function raised (or returned a
value that cannot be pickled) the task exits with status 1, the traceback goes to its output, and
the file holds a *failure record* instead: ``(MAGIC, False, exception, traceback_text)``. The exit
status is what tells the two apart for the manager; a consumer on a worker (a temp passed as an
argument) recognises the record by its ``MAGIC`` tag and raises the producer's exception.

A *result envelope* ``cloudpickle.dumps((MAGIC, ok, value_or_exception, traceback_text))`` is what
function calls write (and the failure record is one with ``ok`` false). The ``MAGIC`` tag is what
tells an envelope apart from a user's own data (TaskVine unwraps any dict with a ``"Result"`` key,
REFERENCE §8.13); a return value that is itself a tuple starting with ``MAGIC`` is not supported.

Three framings run between the worker and the processes this module runs (not the manager's wire
protocol, core.wire.protocol: these never leave the host). Each has its encoder and its checking
decoder here, used by both ends; what is cut short or is not a record raises :class:`FramingError`
(a ValueError: this module cannot import core.errors) saying what was wrong.

- **fork-server channel** (worker <-> core/worker/forkserver.py, a socketpair): one JSON object
  per line, ``\n``-terminated. Worker -> server: a request ``{"id", "sandbox", "env", "unset",
  "stdout", "python", ...}`` (:func:`decode_fork_request`; ``env`` and ``unset`` are the task's
  environment as its difference to the server's: variables to set, names to remove). Server -> worker: ``{"id", "pid"}`` once forked,
  then ``{"id", "status"[, "result": base64]}`` when it ended (:func:`decode_fork_reply`).
  :func:`encode_fork_line` writes either.
- **child result pipe** (fork-server child -> server, fork-mode call -> its library): ``b"R"`` +
  uint64 big-endian length + the result bytes (optional), then ``b"X"`` + int32 big-endian exit
  status, the last thing the child writes (:func:`pipe_result`, :func:`pipe_exit`, :func:`parse_child_pipe`).
- **library socket** (worker <-> library process, a unix socket): uint32 big-endian length + a
  pickled dict with a string ``"op"``: worker -> library ``call`` / ``kill``, library -> worker
  ``ready`` / ``failed`` / ``done`` (:func:`encode_library_message`, :class:`MessageReader`); a
  ``done`` carries the call's result envelope (``"result"``) unless it was over library_runner's
  INLINE_RESULT bytes and went to the call's result file. The two messages of every call also have
  a compact form, which the reader turns into the same dicts: ``b"D"`` + int64 call id + int32
  status + a bool (a result follows) + the result (:func:`encode_library_done`), and ``b"C"`` +
  int64 call id + a mode byte (0 the library's, 1 fork, 2 direct) + its body, read only where the
  call runs (``"body"``): flags, the function's name and the pickled arguments as they are, then
  any other fields as a pickled dict (:func:`encode_library_call`, :func:`call_fields`). A forking
  library writes every page it touches between two forks as a copy-on-write fault (about 2.6 us
  each on the 2-core test VM); ``pickle.dumps`` of a ``done`` dict and ``pickle.loads`` of a
  ``call`` were about 40 such pages a call.
"""

from __future__ import annotations

import _signal
import _thread
import base64
import binascii
import json
import os
import pickle
import socket
import struct
import sys
import traceback
import types
from typing import Any

import cloudpickle

MAGIC = "core.vine/result/1"


class FramingError(ValueError):
    """Bytes between the worker and its fork server, a fork-server child or a library process that
    are not a whole record of their framing (module docstring)."""

_LEN = struct.Struct(">I")


# --- result envelopes ----------------------------------------------------------------------------------


def _portable_exception(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError naming it.

    An exception whose ``__init__`` needs extra arguments pickles fine but fails to unpickle on the
    manager; better to say what it was than to lose it.
    """
    try:
        cloudpickle.loads(cloudpickle.dumps(exc))
        return exc
    except Exception as problem:  # noqa: BLE001 - any failure means "not portable"
        return RuntimeError(f"{type(exc).__qualname__}: {exc} (the original exception could not be pickled: {problem})")


def encode_result(ok: bool, value: Any, tb: str | None = None) -> bytes:
    """The envelope for a return value (``ok``) or a raised exception (not ``ok``)."""
    return encode_outcome(ok, value, tb)[1]


def encode_outcome(ok: bool, value: Any, tb: str | None = None) -> tuple[bool, bytes]:
    """``(ok, envelope)``: as ``encode_result``, also saying whether the envelope holds a value
    (a return value that cannot be pickled becomes a failure)."""
    if not ok:
        value = _portable_exception(value)
    try:
        return ok, cloudpickle.dumps((MAGIC, ok, value, tb))
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value becomes the failure
        err = RuntimeError(f"the function returned a {type(value).__qualname__} that cannot be pickled: {exc}")
        return False, cloudpickle.dumps((MAGIC, False, err, traceback.format_exc()))


# Types the C pickler writes itself, before it would ask cloudpickle's reducer_override: for a value
# of exactly one of these, ``pickle.dumps`` gives ``cloudpickle.dumps``'s bytes without the Python of
# cloudpickle's Pickler (its class, __init__ and dump: ~30 copy-on-write faults in a forked child).
_PLAIN_TYPES = frozenset({type(None), bool, int, float, str, bytes})


def encode_value(value: Any) -> tuple[bool, bytes]:
    """What a PythonTask's output file holds: ``(True, cloudpickle.dumps(value))``, or, for a value
    that cannot be pickled, ``(False, failure record)`` naming why."""
    if type(value) in _PLAIN_TYPES:
        return True, pickle.dumps(value, cloudpickle.DEFAULT_PROTOCOL)
    try:
        return True, cloudpickle.dumps(value)
    except Exception as exc:  # noqa: BLE001 - an unpicklable return value becomes the failure
        err = RuntimeError(f"the function returned a {type(value).__qualname__} that cannot be pickled: {exc}")
        return False, cloudpickle.dumps((MAGIC, False, err, traceback.format_exc()))


def envelope_parts(obj: Any) -> tuple[bool, Any, str | None] | None:
    """``(ok, value, traceback)`` if the unpickled ``obj`` is an envelope (or failure record), else None."""
    if type(obj) is tuple and len(obj) == 4 and type(obj[0]) is str and obj[0] == MAGIC:
        return bool(obj[1]), obj[2], obj[3]
    return None


def decode_result(data: bytes) -> tuple[bool, Any, str | None]:
    """``(ok, value, traceback)`` from an envelope; ValueError if ``data`` is not one."""
    try:
        obj = cloudpickle.loads(data)
    except Exception as exc:
        raise ValueError(f"not a result envelope: {exc}") from exc
    parts = envelope_parts(obj)
    if parts is None:
        raise ValueError("not a result envelope")
    return parts


def _raw_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"with output serialization disabled the function must return bytes or str, not {type(value).__qualname__}")


# --- arguments that are other tasks' outputs ---------------------------------------------------------


class UpstreamFailure(Exception):
    """Raised in a task whose input future holds an exception instead of a value."""


def load_reference(path: str | bytes, serialized: bool) -> Any:
    """The value a producer task left in ``path`` (its output file, linked into this sandbox), or
    in ``path`` itself when the worker passed the file's bytes."""
    if isinstance(path, bytes):
        data = path
    else:
        with open(path, "rb") as fh:
            data = fh.read()
    if not serialized:
        return data
    try:
        obj = cloudpickle.loads(data)
    except Exception as exc:
        raise ValueError(f"the input file {path if isinstance(path, str) else '(in memory)'} holds no readable pickle: {exc}") from exc
    parts = envelope_parts(obj)
    if parts is None:
        return obj  # a PythonTask's output: the pickled value itself
    ok, value, tb = parts
    if not ok:
        if isinstance(value, BaseException):
            value.__vine_traceback__ = tb  # type: ignore[attr-defined]
            raise value
        raise UpstreamFailure(str(value))
    return value


def _set_path(container: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(container, tuple):
        items = list(container)
        items[head] = _set_path(items[head], rest, value)
        return tuple(items) if type(container) is tuple else type(container)(*items)
    container[head] = _set_path(container[head], rest, value)
    return container


def apply_references(args: Any, kwargs: Any, refs: list[tuple[tuple[Any, ...], str, bool]],
                     paths: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Put each referenced output (``refs``: path into args/kwargs, file, serialized?) in its place.

    A file is read from ``paths[remote]`` when given (a path in the worker's cache, or the file's
    bytes, for calls that run without a sandbox), else from ``remote`` in the current directory.
    """
    box = [list(args), dict(kwargs)]
    for path, remote, serialized in refs:
        box = _set_path(box, path, load_reference(paths.get(remote, remote) if paths else remote, serialized))
    return tuple(box[0]), box[1]


def load_call(args_path: str, paths: dict[str, Any] | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    with open(args_path, "rb") as fh:
        payload = cloudpickle.load(fh)
    return unpack_arguments(payload, paths)


def unpack_arguments(payload: Any, paths: dict[str, Any] | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    args, kwargs, refs = payload
    if refs:
        return apply_references(args, kwargs, refs, paths)
    return tuple(args), dict(kwargs)


# --- Python tasks ----------------------------------------------------------------------------------------


def run_python_task(function_path: str, args_path: str, output_path: str | None, serialize: bool = True, *,
                    func: Any = None, args_data: bytes | None = None,
                    result_records: list[bytes] | None = None, result_limit: int = 0) -> int:
    """Run one PythonTask in the current directory (its sandbox); returns the exit status.

    0: the function returned and ``output_path`` holds exactly its pickled value. 1: it raised (or
    returned something that cannot be pickled); ``output_path`` holds the failure record (the
    exception and its traceback, module docstring) and the traceback is on stderr.

    A fork-server child may have its function already loaded (``func``), its pickled arguments in
    memory (``args_data``) and a pipe for the result: a result of at most ``result_limit`` bytes
    becomes its pipe record (see :func:`pipe_result`), appended to ``result_records``, instead of
    going to ``output_path``; :func:`forked_child_main` writes it with the exit status.
    """

    try:
        if func is None:
            with open(function_path, "rb") as fh:
                func = cloudpickle.load(fh)
        if args_data is not None:
            args, kwargs = unpack_arguments(cloudpickle.loads(args_data))
        else:
            args, kwargs = load_call(args_path)
        value = func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the exception is the task's result
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        if output_path and serialize:
            _deliver(encode_result(False, exc, tb), output_path, result_records, result_limit)
        return 1
    if not output_path:
        return 0
    if serialize:
        ok, data = encode_value(value)
        if not ok:
            _deliver(data, output_path, result_records, result_limit)
            sys.stderr.write(cloudpickle.loads(data)[3])
            return 1
    else:
        try:
            data = _raw_bytes(value)
        except TypeError:
            sys.stderr.write(traceback.format_exc())
            return 1
    _deliver(data, output_path, result_records, result_limit)
    return 0


def _deliver(data: bytes, output_path: str | None, records: list[bytes] | None, limit: int) -> None:
    """A PythonTask's output: a pipe record when there is a pipe and it fits, else its file.
    (A module function, not a closure in run_python_task: that made a function object per task.)"""
    if records is not None and len(data) <= limit:
        records.append(pipe_result(data))
    else:
        with open(output_path, "wb") as fh:  # type: ignore[arg-type]
            fh.write(data)


def exit_status(exc: SystemExit) -> int:
    """The status ``python`` exits with for this SystemExit."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    sys.stderr.write(f"{exc.code}\n")
    return 1


def _nothing() -> None:
    """The body an at-fork hook runs while :func:`fork_lean` forks (it has nothing to do then)."""


_idle_hooks: tuple[int, list[tuple[Any, Any]]] = (-1, [])  # (len(sys.modules) when found, [(hook, its body)])


def _idle_fork_hooks() -> list[tuple[Any, Any]]:
    """``(hook, its code)`` for the at-fork hooks of ``threading`` and ``logging`` that have nothing to
    do when a process with one thread forks outside any logging call (empty when a module is not
    loaded or a hook is not a plain argument-less function). Found again only after an import."""
    global _idle_hooks
    if _idle_hooks[0] == len(sys.modules):
        return _idle_hooks[1]
    hooks: list[Any] = []
    threading_module = sys.modules.get("threading")
    if threading_module is not None:
        hooks.append(getattr(threading_module, "_after_fork", None))
    logging_module = sys.modules.get("logging")
    if logging_module is not None:
        # before= takes logging's module lock, after_in_parent= releases it, after_in_child= re-creates
        # it and every handler's lock. With all three idle, the lock is never taken, so the child
        # inherits it free and has no handler lock anyone could be holding.
        hooks += [getattr(logging_module, name, None)
                  for name in ("_acquireLock", "_releaseLock", "_after_at_fork_child_reinit_locks")]
    plain = all(isinstance(h, types.FunctionType) and h.__code__.co_argcount == 0 and not h.__code__.co_freevars
                for h in hooks)
    _idle_hooks = (len(sys.modules), [(h, h.__code__) for h in hooks] if plain else [])
    return _idle_hooks[1]


def fork_lean() -> int:
    """``os.fork()`` for a process with one thread, without the Python at-fork work that does nothing there.

    ``threading``'s after-fork hook re-registers the child's only thread, and ``logging``'s re-create
    locks that no other thread can be holding. They are pure Python, so in a child of a warm process
    they cost about 150 copy-on-write faults (0.7-1.2 ms of a fork server child's ~3 ms on the CI VM,
    measured with getrusage): every code object the 3.11 interpreter runs is written to. For the
    time of the fork their bodies are empty; every other hook (``random``'s reseed, a library's own)
    and the interpreter's own after-fork work run as usual. With a second thread, or hooks not
    shaped as expected, this is a plain ``os.fork()``.
    """
    hooks = silence_fork_hooks()
    try:
        return os.fork()
    finally:
        restore_fork_hooks(hooks)  # in the child too: its own forks must run them


def silence_fork_hooks() -> list[tuple[Any, Any]]:
    """Empty the bodies of the idle at-fork hooks (see :func:`fork_lean`) until
    :func:`restore_fork_hooks` is given what this returns; nothing (``[]``) with a second thread
    running, or hooks not shaped as expected. A forking library keeps them empty while it serves,
    instead of for each fork: emptying and restoring them wrote 11 pages a call in the parent."""
    hooks = _idle_fork_hooks()
    # _thread._count(): the threads started by _thread or threading still running, the main one
    # not counted (sys._current_frames() made a dict of every thread's frame: 10 page faults a call).
    if not hooks or _thread._count():
        return []
    for hook, _ in hooks:
        hook.__code__ = _nothing.__code__
    return hooks


def restore_fork_hooks(hooks: list[tuple[Any, Any]]) -> None:
    """Give the hooks :func:`silence_fork_hooks` emptied their bodies back."""
    for hook, body in hooks:
        hook.__code__ = body


def leave_parent_loop(sock: socket.socket, *fds: int) -> None:
    """In a forked child (of the fork server or a library): let go of the parent's loop, that is its
    signal wake-up pipe, its SIGCHLD handler, its socket and the given descriptors.

    The C functions, not ``signal.signal``'s and ``socket.close``'s Python wrappers: each line of
    Python a child runs writes to (so copies) the pages of its code (see :func:`fork_lean`).
    """
    _signal.set_wakeup_fd(-1)
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)  # (_signal's plain int: signal.SIGCHLD is an enum member)
    os.close(sock.fileno())  # the socket object is never used again here
    for fd in fds:
        os.close(fd)


def forked_child_main(request: dict[str, Any]) -> int:
    """The body of a fork-server child: become the task's process, in its sandbox, and run it."""
    sandbox = request["sandbox"]
    os.chdir(sandbox)
    # No O_TRUNC: the worker created it empty, and truncating an existing file makes ext4 flush it at close.
    fd = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    prepared = request.get("environ")
    if prepared is not None:
        # The task's whole environment, made once in the server for every request that has this
        # one (core/worker/forkserver.py ``PreparedEnvironments``): libc's ``environ`` pointed at
        # its array and os.environ's dict replaced, instead of a glibc setenv per variable, whose
        # mallocs are most of the ~50 copy-on-write faults that setting ten variables costs here.
        pointer, address, data = prepared
        pointer.value = address
        os.environ._data = os.environb._data = data  # type: ignore[attr-defined]  # (one dict, as CPython's POSIX os has)
    else:
        # The request holds only what differs from the server's environment (which is this
        # process's now): no walk of os.environ, whose every touched page would be a copy-on-write
        # fault here.
        for key in request["unset"]:
            os.environ.pop(key, None)
        for key, value in request["env"].items():
            os.environ[key] = value
    sys.argv = [".vine_runner.py"]
    if sys.path and sys.path[0] != sandbox:
        sys.path.insert(0, sandbox)
    py = request["python"]
    inline_args = py.get("args_inline")
    result_fd = int(request.get("result_fd", -1))
    records: list[bytes] | None = [] if result_fd >= 0 else None
    try:
        code = run_python_task(py["function"], py["args"], py.get("output"), bool(py.get("serialize", True)),
                               func=request.get("function_object"),
                               args_data=binascii.a2b_base64(inline_args) if inline_args is not None else None,
                               result_records=records, result_limit=int(request.get("result_limit", 0)))
    except SystemExit as exc:  # sys.exit() in the function: exit as a fresh interpreter would
        code = exit_status(exc)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - a closed stdout must not hide the exit status
            pass
    if records is not None:
        # Done: the output is flushed and nothing but the exit is left. Saying so lets the server
        # report the task now instead of after the kernel has torn this process down (an exit of
        # a fork costs milliseconds, all of it in a small task's latency, measured with strace).
        # One write, the result and the status: the server has both at one wake-up.
        records.append(pipe_exit(code))
        try:
            write_all(result_fd, b"".join(records))
            os.close(result_fd)
        except OSError:
            pass  # the server is gone or stopped reading: it learns the status from waitpid
    return code


# How much one read of a child's result pipe, or of the fork server's or a library's socket, asks
# for. No more: CPython allocates the whole size for each read and shrinks the bytes to what came,
# and with 1 MiB reads glibc's heap crept up in a process that forks per call (a fork-mode
# library's anonymous memory: +930 kB over 2,000 calls; with 64 KiB, flat), memory whose page
# tables every later fork copies and every child's exit tears down. A bigger result takes more reads.
READ_CHUNK = 1 << 16

# What a fork-server child writes to its result pipe: optionally ``R`` + 8-byte length + the result
# envelope, then ``X`` + its 4-byte exit status once it has nothing left to do but exit.
_RESULT_HEAD = struct.Struct(">cQ")
_EXIT = struct.Struct(">ci")


def pipe_result(data: bytes) -> bytes:
    """The result record of a fork-server child's pipe."""
    return _RESULT_HEAD.pack(b"R", len(data)) + data


def pipe_exit(code: int) -> bytes:
    """The last record of a fork-server child's pipe: the status it is about to exit with."""
    return _EXIT.pack(b"X", code & 0xFF)


def _result_record(data: bytes | memoryview) -> tuple[bytes | None, int]:
    """The result record at the start of a child's pipe, if any: ``(result or None, where it ends)``.
    Read at offsets, not through slices (a forking library parses every call's pipe this way)."""
    if not data or data[0] != 0x52:  # b"R"
        return None, 0
    if len(data) < _RESULT_HEAD.size:
        raise FramingError(f"result record cut short: {len(data)} bytes of its {_RESULT_HEAD.size}-byte head")
    _, n = _RESULT_HEAD.unpack_from(data)
    end = _RESULT_HEAD.size + n
    if len(data) < end:
        raise FramingError(f"result record cut short: {len(data) - _RESULT_HEAD.size} of its {n} bytes")
    return bytes(data[_RESULT_HEAD.size:end]), end


def parse_child_pipe(data: bytes | memoryview) -> tuple[bytes | None, int]:
    """``(result or None, exit status)`` from the whole of a finished child's pipe; FramingError if
    it is not ``[R record] X record`` exactly (the child died, or something else wrote there)."""
    result, pos = _result_record(data)
    left = len(data) - pos
    if not left:
        raise FramingError("no exit record: the child ended before it finished")
    if data[pos] != 0x58:  # b"X"
        raise FramingError(f"unknown record tag {bytes(data[pos:pos + 1])!r} at byte {pos}")
    if left != _EXIT.size:
        raise FramingError(f"exit record of {left} bytes, not {_EXIT.size}"
                           + (" (cut short)" if left < _EXIT.size else " (bytes follow it)"))
    return result, _EXIT.unpack_from(data, pos)[1]


def child_pipe_ended(data: bytes | bytearray) -> bool:
    """Whether what a child's pipe has given so far reaches past where its exit record must end (an
    ``R`` record's head says where that is): then nothing but the child's exit is left to wait for,
    and :func:`read_child_pipe` says whether the records are right. Its own framing's lengths only,
    no copy: the server asks this after every read of a result that may come in many."""
    end = _EXIT.size
    if data[:1] == b"R":
        if len(data) < _RESULT_HEAD.size:
            return False
        end += _RESULT_HEAD.size + _RESULT_HEAD.unpack_from(data)[1]
    return len(data) >= end


def read_child_pipe(data: bytes) -> tuple[bytes | None, int | None]:
    """``(result or None, exit status or None)`` from everything a child wrote to its pipe.

    The status is there only if the child finished normally (the records are whole and nothing
    follows them); otherwise the caller waits for the child's real exit status, and a result
    record that is whole is still used.
    """
    try:
        return parse_child_pipe(data)
    except FramingError:
        try:
            return _result_record(data)[0], None
        except FramingError:
            return None, None  # cut short: the child died writing it


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a pipe takes what fits in it per write)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- the library socket (its processes are core/wire/library_runner.py) ----------------------------------


LIBRARY_MESSAGE_MAX = 1 << 30  # a call's inline arguments or result is at most ~1 MiB; this bounds a bad prefix


def encode_library_message(msg: dict[str, Any]) -> bytes:
    """One message of the library socket (module docstring): length prefix + pickled dict."""
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


_DONE_HEAD = struct.Struct(">cqi?")  # b"D", call id, status, whether a result follows
_CALL_HEAD = struct.Struct(">cqB")  # b"C", call id, mode code
_CALL_MODES: tuple[str | None, ...] = (None, "fork", "direct")  # a compact call's mode code -> its "mode"


def encode_library_done(call_id: int, status: int, result: bytes | None) -> bytes:
    """A ``done`` in its compact form (module docstring): no pickling in the library."""
    head = _DONE_HEAD.pack(b"D", call_id, status, result is not None)
    if result is None:
        return _LEN.pack(_DONE_HEAD.size) + head
    return b"".join((_LEN.pack(_DONE_HEAD.size + len(result)), head, result))


_CALL_BODY = struct.Struct(">BHI")  # a compact call's body: flags, function name length, arguments length
_INLINE_OUTPUT, _HAS_ARGS, _HAS_MORE = 1, 2, 4  # its flags: output_inline, "args" present, more fields pickled after


def encode_library_call(call_id: int, mode: str | None, fields: dict[str, Any]) -> bytes:
    """A ``call`` in its compact form: its id and mode, then its body, which only the process that
    runs the call reads (:func:`call_fields`): the function's name and the pickled arguments as
    they are, and any other fields as a pickled dict after them (a fast-path call has none)."""
    if mode not in _CALL_MODES:
        raise ValueError(f"call {call_id}: unknown mode {mode!r}; it is 'fork', 'direct' or None (the library's)")
    rest = dict(fields)
    function = str(rest.pop("function")).encode()
    args = rest.pop("args", None)
    flags = (_INLINE_OUTPUT if rest.pop("output_inline", False) else 0) | (_HAS_ARGS if args is not None else 0)
    more = b""
    if rest:
        flags |= _HAS_MORE
        more = pickle.dumps(rest, protocol=pickle.HIGHEST_PROTOCOL)
    data = b"".join((_CALL_HEAD.pack(b"C", call_id, _CALL_MODES.index(mode)), _CALL_BODY.pack(flags, len(function), len(args or b"")),
                     function, args or b"", more))
    return _LEN.pack(len(data)) + data


def call_fields(msg: dict[str, Any]) -> dict[str, Any]:
    """A ``call`` message with all its fields, a compact one's read from its ``body``: struct and
    slices, no unpickling but of the fields past the name and arguments (in a forked child, every
    page written is a copy: an unpickling of the whole body was ~15 of them a call)."""
    body = msg.get("body")
    if body is None:
        return msg
    try:
        flags, n_function, n_args = _CALL_BODY.unpack_from(body)
        start = _CALL_BODY.size + n_function
        end = start + n_args
        if end > len(body):
            raise FramingError(f"call {msg['id']}: its body of {len(body)} bytes is cut short")
        fields: dict[str, Any] = pickle.loads(body[end:]) if flags & _HAS_MORE else {}
        if type(fields) is not dict:
            raise FramingError(f"call {msg['id']}: its fields are a {type(fields).__name__}, not a dict")
        fields["function"] = body[_CALL_BODY.size:start].decode()
    except (struct.error, UnicodeDecodeError, pickle.UnpicklingError, EOFError) as exc:
        raise FramingError(f"call {msg['id']}: its body is malformed: {exc}") from None
    if flags & _HAS_ARGS:
        fields["args"] = body[start:end]
    if flags & _INLINE_OUTPUT:
        fields["output_inline"] = True
    fields["op"], fields["id"], fields["mode"] = "call", msg["id"], msg["mode"]
    return fields


class MessageReader:
    """Splits a byte stream of the library socket into its messages (dicts with a string ``"op"``).

    ``feed`` raises FramingError for a prefix over LIBRARY_MESSAGE_MAX, bytes that do not unpickle,
    or a message that is not such a dict; after that the stream is lost. ``pending`` is the count of
    bytes of a message not yet whole (not zero at the end of the stream: it was cut short).
    """

    def __init__(self) -> None:
        self.buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self.buf)

    def feed(self, data: bytes | memoryview) -> list[dict[str, Any]]:
        # Read in place: only the bytes of a message not whole yet are kept (in ``buf``), and each
        # message's body is copied once at most (a library forks between reads, and every buffer it
        # grows, slices and copies is pages written, each a copy-on-write fault).
        buf = self.buf
        if buf:
            buf += data
            if len(buf) < _LEN.size or len(buf) - _LEN.size < _LEN.unpack_from(buf)[0] <= LIBRARY_MESSAGE_MAX:
                return []  # the first message is still not whole: nothing copied until it is
            data = bytes(buf)
            buf.clear()
        out = []
        pos, end = 0, len(data)
        with memoryview(data) as view:
            while end - pos >= _LEN.size:
                (n,) = _LEN.unpack_from(view, pos)
                if n > LIBRARY_MESSAGE_MAX:
                    raise FramingError(f"library message of {n} bytes announced, over {LIBRARY_MESSAGE_MAX}")
                start = pos + _LEN.size
                if end - start < n:
                    break
                pos = start + n
                if n and (view[start] == 0x44 or view[start] == 0x43):  # b"D", b"C": the compact forms
                    out.append(_compact_message(view, start, pos))
                    continue
                try:
                    msg = pickle.loads(view[start:pos])
                except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the stream is garbage
                    raise FramingError(f"library message of {n} bytes does not unpickle: {type(exc).__name__}: {exc}") from None
                if type(msg) is not dict or type(msg.get("op")) is not str:
                    raise FramingError(f"library message is {type(msg).__name__} {repr(msg)[:60]}, not a dict with an 'op'")
                out.append(msg)
            if pos < end:
                buf += view[pos:]
        return out


def _compact_message(view: memoryview, start: int, stop: int) -> dict[str, Any]:
    """A compact ``done`` or ``call`` (module docstring), ``view[start:stop]``, as the dict its pickled form would be."""
    try:
        # (Its own length first: unpack_from would read on into the next message.)
        if view[start] == 0x44:  # b"D"
            if stop - start < _DONE_HEAD.size:
                raise FramingError(f"compact done of {stop - start} bytes is cut short")
            _, call_id, status, has_result = _DONE_HEAD.unpack_from(view, start)
            return {"op": "done", "id": call_id, "status": status,
                    "result": bytes(view[start + _DONE_HEAD.size:stop]) if has_result else None}
        if stop - start < _CALL_HEAD.size:
            raise FramingError(f"compact call of {stop - start} bytes is cut short")
        _, call_id, mode = _CALL_HEAD.unpack_from(view, start)
        return {"op": "call", "id": call_id, "mode": _CALL_MODES[mode], "body": bytes(view[start + _CALL_HEAD.size:stop])}
    except (struct.error, IndexError) as exc:
        raise FramingError(f"compact library message of {stop - start} bytes is malformed: {exc}") from None


# --- the fork-server channel -----------------------------------------------------------------------------


def encode_fork_line(msg: dict[str, Any]) -> bytes:
    """One line of the fork-server channel (module docstring). JSON never holds a raw newline."""
    return _FORK_ENCODER.encode(msg).encode() + b"\n"


_FORK_ENCODER = json.JSONEncoder(separators=(",", ":"))  # json.dumps with separators makes a new one per call


def fork_started_line(task_id: int, pid: int) -> bytes:
    """``encode_fork_line({"id": task_id, "pid": pid})``, byte for byte, without the JSON encoder's Python."""
    return b'{"id":%d,"pid":%d}\n' % (task_id, pid)


def fork_ended_line(task_id: int, status: int, result: bytes | None) -> bytes:
    """``encode_fork_line({"id", "status"[, "result": base64]})``, byte for byte (see fork_started_line)."""
    if result is None:
        return b'{"id":%d,"status":%d}\n' % (task_id, status)
    return b'{"id":%d,"status":%d,"result":"%s"}\n' % (task_id, status, binascii.b2a_base64(result, newline=False))


_JSON_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner: json.loads without its Python layers


def _fork_line(line: bytes, what: str) -> dict[str, Any]:
    try:
        text = line.decode().strip()
        msg, end = _JSON_SCAN(text, 0)
        if end != len(text):
            raise ValueError(f"extra data at character {end}")
    except StopIteration:
        raise FramingError(f"fork-server {what} is not JSON: {line[:60]!r}") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FramingError(f"fork-server {what} is not JSON: {exc}") from None
    if type(msg) is not dict:
        raise FramingError(f"fork-server {what} is a {type(msg).__name__}, not an object")
    if type(msg.get("id")) is not int:
        raise FramingError(f"fork-server {what} has id {msg.get('id')!r}, not an integer")
    return msg


_REQUEST_FIELDS = {"sandbox": str, "env": dict, "unset": list, "stdout": str, "python": dict}


def decode_fork_request(line: bytes) -> dict[str, Any]:
    """A request line from the worker, its fields checked (FramingError names the first wrong one)."""
    msg = _fork_line(line, "request")
    for name, kind in _REQUEST_FIELDS.items():
        if type(msg.get(name)) is not kind:
            raise FramingError(f"fork-server request {msg['id']} has {name} {repr(msg.get(name))[:60]}, not a {kind.__name__}")
    return msg


def decode_fork_reply(line: bytes) -> tuple[int, int | None, int | None, bytes | None]:
    """``(task id, pid, None, None)`` for a started child, ``(task id, None, status, result or None)``
    for an ended one; FramingError for anything else."""
    msg = _fork_line(line, "reply")
    tid = msg["id"]
    if "pid" in msg:
        if type(msg["pid"]) is not int:
            raise FramingError(f"fork-server reply for task {tid} has pid {msg['pid']!r}, not an integer")
        return tid, msg["pid"], None, None
    if type(msg.get("status")) is not int:
        raise FramingError(f"fork-server reply for task {tid} has neither a pid nor an integer status")
    result = msg.get("result")
    if result is None:
        return tid, None, msg["status"], None
    try:
        return tid, None, msg["status"], base64.b64decode(result, validate=True)
    except (TypeError, ValueError) as exc:
        raise FramingError(f"fork-server reply for task {tid} has a result that is not base64: {exc}") from None


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[1] == "task":
        function_path, args_path, output_path, serialize = argv[2:6]
        return run_python_task(function_path, args_path, output_path if output_path != "-" else None, serialize == "1")
    sys.stderr.write("usage: .vine_runner.py task FUNCTION ARGS OUTPUT SERIALIZE (a library runs .vine_library_runner.py)\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
