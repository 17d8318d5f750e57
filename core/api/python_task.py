"""``PythonTask``: a Python function call run as a task, its value (or exception) brought back.

::

    PythonTask(fn, *args, **kwargs)           worker
    ───────────────────────────────           ──────
    submit: cloudpickle fn ─► .vine_function   (content-named, so sent once per worker; pickled
              once while fn is unchanged)
            cloudpickle args ─► in the task     fork server child runs fn(*args, **kwargs)
              message (.vine_args if > 48 KiB)
    .output ◄── .vine_result ◄──────────────── cloudpickle.dumps(value) (exit 0), or the
                in memory                      failure record: exception + traceback (exit 1);
                                               up to 64 KiB inside the task's ``complete``

Without an environment the worker's fork server runs the task in a fresh fork of a warm interpreter:
the server unpickles the function once per worker (so its module is imported once, not by every
task), and the child sends the result back through the server instead of writing a file
(core/worker/forkserver.py). With ``add_environment`` the task runs ``python3 .vine_runner.py`` inside that
environment instead, with every piece as a file in its sandbox.

The output file (``output_file``, a buffer or with ``enable_temp_output`` a temp) holds exactly the
pickled return value, as TaskVine's does: a consumer task may ``cloudpickle.load()`` it. If the
function raised, the task exits with status 1 and the file holds a failure record instead (the
exception and its traceback, core/wire/remote.py), so a consumer of the temp re-raises the producer's
own exception and ``output`` can give it back.

``output`` is the return value; if the function raised, it is the exception object itself, with the
remote traceback text as ``exc.__vine_traceback__`` and as ``exc.__cause__`` (a
:class:`RemoteTraceback`, so re-raising it prints both tracebacks, as ``concurrent.futures`` does).
A task that ended without running the function to completion (killed, lost, out of time) gives a
:class:`PythonTaskNoResult` instance instead.

Arguments may be futures of other tasks whose output is a temp file (``core.futures``): such an
argument becomes an input of this task and is loaded on the worker, so chains stay on workers.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import pickle
import secrets
import sys
import types
import weakref
from typing import TYPE_CHECKING, Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle_impl

from .. import constants as C
from ..errors import TaskError, TransferError, VineError
from ..wire.messages import PythonRun, TaskDefinition
from ..wire.remote import decode_result
from .files import File
from .task import Task

if TYPE_CHECKING:
    from .files import TaskHost

RUNNER_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wire", "remote.py")
FUNCTION_NAME = ".vine_function"
ARGS_NAME = ".vine_args"
RESULT_NAME = ".vine_result"
RUNNER_NAME = ".vine_runner.py"
INLINE_ARGS_LIMIT = 48 << 10  # larger pickled arguments travel as an input file (as FunctionCall's do)
RESULT_IN_COMPLETE_LIMIT = 64 << 10  # a result up to this size comes back inside the task's complete message

_UNSET: Any = object()


class PythonTaskNoResult(VineError):
    """What ``PythonTask.output`` gives when the task ended without a result (its message says why)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a worker, attached as the exception's ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def attach_traceback(exc: Any, tb: str | None) -> Any:
    """Give a remote exception its traceback: ``__vine_traceback__`` and a RemoteTraceback cause."""
    if isinstance(exc, BaseException) and tb:
        try:
            exc.__vine_traceback__ = tb  # type: ignore[attr-defined]
            exc.__cause__ = RemoteTraceback(tb)
        except (AttributeError, TypeError):
            pass
    return exc


def content_buffer(manager: TaskHost, data: bytes, name: str | None = None) -> File:
    """A workflow-level buffer named by its content, so identical bytes travel to a worker once
    (``name``: that name, already computed by :func:`content_name` from ``data``)."""
    f = File(manager, "buffer", "buffer", cache="workflow", data=data, cache_name=name or content_name(data))
    return manager._remember(f)


def function_file(manager: TaskHost, func: Any) -> File:
    """The content-named buffer holding ``func`` pickled, for a PythonTask's ``.vine_function`` input.

    The pickle is made once and reused for as long as nothing it was made from has changed
    (checked at every submit: see :func:`pickled_function`); a callable whose class sets
    ``vine_pickle_once = True`` promises that its pickle never changes (an object holding only
    immutable data, such as parslvine's bound app call) and is pickled once per object. Every
    PythonTask given the same bytes names the same buffer, so a worker receives it once.
    """
    return content_buffer(manager, *pickled_function(func))


# --- the function, pickled once while unchanged ------------------------------------------------------------
# A PythonTask's function pickled once and reused while nothing its pickle reads has changed.
#
# cloudpickle writes a function defined in ``__main__`` (or in a notebook) by value: its code, its
# defaults, its closure's cells, the globals its code names, a few module-level names. Any of those
# may change between two submits of the same function object (a global rebound, a list mutated), so
# a pickle cannot simply be kept per function. What is kept here is a pickle together with a
# *snapshot* of everything it was made from, and it is reused only when, at the next submit:
#
# - the function's code, defaults, keyword defaults, annotations, name, qualified name, module and
#   docstring are the very objects they were (compared by identity), and its ``__dict__`` is empty;
# - every global its code names (each name in ``co_names``, nested code objects included, that the
#   function's globals hold) and every closure cell holds the very object it held, and each such
#   object is one whose pickle cannot change while it stays the same object: an int, float,
#   complex, str, bytes, bool or None, a tuple of those, a module, or a function or class that
#   cloudpickle writes by reference (by its importable name);
# - when a module is among them, no module was imported since (cloudpickle also writes the
#   submodules then imported that the code names); and as many modules are registered with
#   ``cloudpickle.register_pickle_by_value`` as then.
#
# Anything else (a mutable global such as a list or dict, a global that is itself a ``__main__``
# function, a callable that is not a plain function) is pickled at every submit, as before. A
# function importable from a module is written by reference anyway, and its snapshot is trivially
# stable. A callable whose class sets ``vine_pickle_once = True`` promises a fixed pickle and is
# pickled once per object without any snapshot (parslvine's bound app call).

# The modules cloudpickle was told to write by value (cloudpickle.register_pickle_by_value).
_BY_VALUE: Any = getattr(_cloudpickle_impl, "_PICKLE_BY_VALUE_MODULES", ())
_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_MAX_NAMES = 64  # a function naming more globals than this is not worth checking per submit


def serialize(obj: Any, what: str) -> bytes:
    """``cloudpickle.dumps(obj)``, or a TaskError naming ``what`` could not be pickled."""
    try:
        return cloudpickle.dumps(obj)
    except Exception as exc:
        raise TaskError(f"cannot serialize the {what} with cloudpickle: {type(exc).__name__}: {exc}") from exc


def content_name(data: bytes) -> str:
    """The cache name of a buffer holding ``data``, by its content."""
    return f"buffer-md5-{hashlib.md5(data).hexdigest()}"


def pickled_function(func: Any) -> tuple[bytes, str]:
    """``func`` pickled, and the content name of those bytes; reused when the notes above allow."""
    if getattr(type(func), "vine_pickle_once", False) is True:
        try:
            known = _PICKLED_ONCE.get(func)
            if known is None:
                data = serialize(func, _what(func))
                known = _PICKLED_ONCE[func] = (data, content_name(data))
            return known
        except TypeError:  # not weak-referenceable or not hashable: pickled per task after all
            data = serialize(func, _what(func))
            return data, content_name(data)
    if type(func) is not types.FunctionType:
        data = serialize(func, _what(func))
        return data, content_name(data)
    entry = _SNAPSHOTS.get(func)
    if entry is not None and _unchanged(func, entry[0]):
        return entry[1], entry[2]
    data = serialize(func, _what(func))
    name = content_name(data)
    snapshot = _snapshot(func)
    if snapshot is not None:
        _SNAPSHOTS[func] = (snapshot, data, name)
    elif entry is not None:
        del _SNAPSHOTS[func]
    return data, name


def _what(func: Any) -> str:
    return f"function {getattr(func, '__qualname__', func)!r}"


# Promised-fixed callables -> (their pickle, its content name). Only bytes: nothing that holds a manager.
_PICKLED_ONCE: weakref.WeakKeyDictionary[Any, tuple[bytes, str]] = weakref.WeakKeyDictionary()
# Plain functions -> (the snapshot their pickle was made from, the pickle, its content name).
_SNAPSHOTS: weakref.WeakKeyDictionary[types.FunctionType, tuple[tuple[Any, ...], bytes, str]] = weakref.WeakKeyDictionary()
# Code object -> the names it (and the code nested in it) loads, which may be globals.
_CODE_NAMES: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _names(code: types.CodeType) -> tuple[str, ...]:
    known = _CODE_NAMES.get(code)
    if known is None:
        found: dict[str, None] = {}
        stack = [code]
        while stack:
            co = stack.pop()
            found.update(dict.fromkeys(co.co_names))
            stack.extend(c for c in co.co_consts if type(c) is types.CodeType)
        known = _CODE_NAMES[code] = tuple(found)
    return known


def _stable(value: Any, depth: int = 0) -> bool:
    """Whether ``value``'s pickle stays the same as long as it is the same object."""
    t = type(value)
    if t in _SCALARS:
        return True
    if t is tuple:
        return depth < 2 and len(value) <= 32 and all(_stable(v, depth + 1) for v in value)
    # A module is written by name unless it is dynamic or registered by value (then its whole
    # namespace is written, and that can change while it stays the same object).
    if t is types.FunctionType or t is types.ModuleType or isinstance(value, type):
        try:
            return bool(_cloudpickle_impl._should_pickle_by_reference(value))
        except Exception:  # noqa: BLE001 - whatever cloudpickle cannot look up is simply not reused
            return False
    return False


def _parts(func: types.FunctionType) -> tuple[list[Any], list[Any]] | None:
    """The objects ``func``'s pickle is made from, in a fixed order, and which of them are values
    (globals, closure cells, defaults) that must be stable; None if its ``__dict__`` is not empty."""
    if func.__dict__:
        return None
    code = func.__code__
    names = _names(code)
    if len(names) > _MAX_NAMES:
        return None
    g = func.__globals__
    kwdefaults = func.__kwdefaults__
    annotations = func.__annotations__
    parts: list[Any] = [code, func.__name__, func.__qualname__, func.__module__, func.__doc__,
                        g.get("__name__"), g.get("__package__"), g.get("__file__"), g.get("__path__"),
                        len(_BY_VALUE)]  # a module registered for pickling by value changes what is written
    values: list[Any] = []
    if func.__defaults__ is not None:
        values.append(func.__defaults__)
    if kwdefaults:
        parts.extend(kwdefaults)  # the keys
        values.extend(kwdefaults.values())
    if annotations:
        parts.extend(annotations)
        values.extend(annotations.values())
    closure = func.__closure__
    if closure is not None:
        try:
            values.extend(cell.cell_contents for cell in closure)
        except ValueError:  # an empty cell
            return None
    values.extend(g[n] for n in names if n in g)
    parts.extend(values)
    if any(type(v) is types.ModuleType for v in values):
        parts.append(len(sys.modules))
    return parts, values


def _snapshot(func: types.FunctionType) -> tuple[Any, ...] | None:
    found = _parts(func)
    if found is None or not all(_stable(v) for v in found[1]):
        return None
    return tuple(found[0])


def _unchanged(func: types.FunctionType, snapshot: tuple[Any, ...]) -> bool:
    """The same objects as when ``snapshot`` was taken (checked stable then): by identity, or for
    ints (the count of imported modules, a global rebound to an equal int) by equal value."""
    found = _parts(func)
    if found is None:
        return False
    parts = found[0]
    if len(parts) != len(snapshot):
        return False
    for a, b in zip(parts, snapshot):
        if a is not b and not (type(a) is int and type(b) is int and a == b):
            return False
    return True


def script_file(manager: TaskHost, path: str) -> File:
    """A script of ours that workers run (the runner, the library runner): declared once per manager
    and cached on workers for good."""
    files = _SCRIPT_FILES.get(manager)
    if files is None:
        files = _SCRIPT_FILES[manager] = {}
    f = files.get(path)
    if f is None:
        f = files[path] = manager.declare_file(path, cache="worker")
    return f


def runner_file(manager: TaskHost) -> File:
    """The standalone runner script (core/wire/remote.py)."""
    return script_file(manager, RUNNER_PATH)


# Each manager's declared scripts by path, forgotten with the manager.
_SCRIPT_FILES: weakref.WeakKeyDictionary[TaskHost, dict[str, File]] = weakref.WeakKeyDictionary()


# --- arguments that are other tasks' outputs -------------------------------------------------------------


Reference = tuple[tuple[Any, ...], str, bool]  # path into (args, kwargs), remote file name, serialized?


def extract_references(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any], list[Reference], list[tuple[File, str]]]:
    """Replace futures in ``args``/``kwargs`` (also inside lists, tuples, dicts) by None.

    Returns the new args and kwargs, the references (path, remote name, serialized?) the worker uses
    to put the values back, and the (file, remote name) inputs to add. An object takes part if it has
    ``_vine_reference()``, returning ``(File, serialized)``.
    """
    refs: list[Reference] = []
    inputs: list[tuple[File, str]] = []
    names: dict[str, str] = {}

    def walk(obj: Any, path: tuple[Any, ...]) -> Any:
        if getattr(type(obj), "_vine_reference", None) is not None and not isinstance(obj, type):
            f, serialized = obj._vine_reference()
            remote = names.get(f.cache_name)
            if remote is None:
                remote = names[f.cache_name] = f".vine_ref_{len(names)}"
                inputs.append((f, remote))
            refs.append((path, remote, serialized))
            return None
        if type(obj) in (list, tuple):
            items = [walk(x, path + (i,)) for i, x in enumerate(obj)]
            return items if type(obj) is list else tuple(items)
        if type(obj) is dict:
            return {k: walk(v, path + (k,)) for k, v in obj.items()}
        return obj

    new_args = walk(list(args), (0,))
    new_kwargs = walk(dict(kwargs), (1,))
    return new_args, new_kwargs, refs, inputs


_PLAIN_SCALARS = frozenset({bytes, str, int, float, bool, type(None)})


def plain_values(obj: Any, depth: int = 0) -> bool:
    """True for scalars (bytes, str, numbers, None) and small lists/tuples/dicts of them, nested a little.

    Exact types only: a subclass may pickle by its own rules or carry a task reference. Such
    arguments need no reference walk, and the C pickler writes them as cloudpickle would.
    """
    t = type(obj)
    if t in _PLAIN_SCALARS:
        return True
    if depth >= 3:
        return False
    if t is list or t is tuple:
        return len(obj) <= 64 and all(plain_values(x, depth + 1) for x in obj)
    if t is dict:
        return len(obj) <= 64 and all(type(k) in _PLAIN_SCALARS and plain_values(v, depth + 1) for k, v in obj.items())
    return False


# This process's result-name prefix and count ("prefix", "ids"), drawn at the first name. A forked
# child empties it (a C method as the at-fork hook: no Python runs in every forked call's child,
# where each page written is a copy) and draws its own if it ever names a result.
_RESULT_NAMES: dict[str, Any] = {}
os.register_at_fork(after_in_child=_RESULT_NAMES.clear)


def _result_name() -> str:
    """A fresh name for a result buffer: a random prefix drawn once per process, then a count
    (a random draw per task, secrets.token_hex, was a system call and a release of the
    interpreter lock in every submit). As unique as the random names of other buffers."""
    names = _RESULT_NAMES
    if not names:
        names["prefix"], names["ids"] = f"buffer-rnd-{secrets.token_hex(8)}-", itertools.count(1)
    return f"{names['prefix']}{next(names['ids']):x}"


class PythonTask(Task):
    """Run ``func(*args, **kwargs)`` on a worker; ``output`` is its return value (or exception).

    Resources and other options are set as on any :class:`Task` (``set_cores``, ``set_tag``, ...).
    ``func`` is pickled once and reused while nothing its pickle reads has changed (see
    :func:`pickled_function`; a callable whose class sets ``vine_pickle_once = True`` is
    pickled once per object). Arguments of 48 KiB or less travel inside the task's message, and a
    result of 64 KiB or less comes back inside the task's ``complete`` (kept in memory here).
    """

    def __init__(self, func: Any, *args: Any, **kwargs: Any) -> None:
        if not callable(func):
            raise TypeError(f"PythonTask needs a callable, got {type(func).__name__}")
        super().__init__(f"python3 {RUNNER_NAME} task {FUNCTION_NAME} {ARGS_NAME} {RESULT_NAME} 1")
        self._func = func
        self._raw_args, self._raw_kwargs = args, kwargs  # futures among them are resolved at submit
        self._serialize_output = True
        self._temp_output = False
        self._output_cache: Any = False
        self._output_file: File | None = None
        self._warm_imports: list[str] = []
        self._inline_args: str | None = None  # base64 of small pickled arguments, sent in the task message
        self._decoded: Any = _UNSET

    # -- TaskVine's PythonTask options -----------------------------------------------------------------
    def enable_temp_output(self) -> None:
        """Leave the result on the worker as a temp file (usable as another task's input)."""
        self._mutable()
        self._temp_output = True

    def disable_temp_output(self) -> None:
        self._mutable()
        self._temp_output = False

    def set_output_cache(self, cache: Any = False) -> None:
        """Cache level of the result file on the worker (``cache=`` of ``declare_buffer``)."""
        self._mutable()
        self._output_cache = cache

    def disable_output_serialization(self) -> None:
        """The function returns bytes (or str); ``output`` is those bytes, unpickled by nobody."""
        self._mutable()
        self._serialize_output = False

    def set_warm_imports(self, modules: list[str]) -> None:
        """Modules the worker's fork server imports once and keeps, so this task's fork finds them loaded.

        For frameworks whose import costs more than the task (Parsl: about a second). Give module
        names; they must not start threads at import (the server forks after importing them).
        Ignored when the task runs in its own environment (``add_environment``).
        """
        self._mutable()
        if isinstance(modules, str) or not all(isinstance(m, str) and m for m in modules):
            raise TypeError(f"set_warm_imports takes a list of module names, got {modules!r}")
        self._warm_imports = list(modules)

    @property
    def output_file(self) -> File | None:
        """The File holding the result (a buffer, or a temp with ``enable_temp_output``); set at submit."""
        return self._output_file

    # -- submission -----------------------------------------------------------------------------------------
    def _prepare_submit(self, manager: TaskHost) -> None:
        fn_file = function_file(manager, self._func)
        if plain_values(self._raw_args) and plain_values(self._raw_kwargs):
            # Scalars and small containers of them: no task reference can be among them, and the C
            # pickler writes the same bytes cloudpickle would, without the walk and cloudpickle's set-up.
            args_data = pickle.dumps((list(self._raw_args), dict(self._raw_kwargs), []), protocol=pickle.HIGHEST_PROTOCOL)
        else:
            call_args, call_kwargs, refs, ref_inputs = extract_references(self._raw_args, self._raw_kwargs)
            args_data = serialize((call_args, call_kwargs, refs), "arguments")
            for f, remote in ref_inputs:
                self.add_input(f, remote)
        self.add_input(fn_file, FUNCTION_NAME)
        # Small arguments travel inside the task message: no buffer to declare, send, cache and link.
        # In an environment the runner script reads them from a file, as before.
        self._inline_args = None
        if len(args_data) <= INLINE_ARGS_LIMIT and not self.environments:
            self._inline_args = base64.b64encode(args_data).decode()
        else:
            self.add_input(manager.declare_buffer(args_data), ARGS_NAME)
        if self._temp_output:
            out = manager.declare_temp()
        else:
            # A buffer named without a random draw per task (see _result_name).
            out = manager._remember(File(manager, "buffer", "buffer", cache=self._output_cache, cache_name=_result_name()))
        self._output_file = out
        self.add_output(out, RESULT_NAME)
        if self.environments:
            self.add_input(runner_file(manager), RUNNER_NAME)
        self._command = f"python3 {RUNNER_NAME} task {FUNCTION_NAME} {ARGS_NAME} {RESULT_NAME} {1 if self._serialize_output else 0}"

    def _finalize_done(self, manager: TaskHost) -> None:
        """Let the manager forget this task's own buffers (its arguments, its returned result).

        Without a temp output nothing can need them again (a temp's producer may be re-run to
        recover it, so then they stay); the result's bytes live on in ``output_file``.
        """
        if self._temp_output:
            return
        for m in self.inputs:
            if m.remote_name == ARGS_NAME:
                manager.undeclare_file(m.file)
        if self._output_file is not None and self._output_file.kind == "buffer":
            manager.undeclare_file(self._output_file)

    def _task_spec(self, **decided: Any) -> TaskDefinition:
        # Without an environment, the fork server fast path (core/worker/forkserver.py): the function is
        # read from the worker's cache (and kept unpickled there), the result comes back through the
        # server's channel.
        fast = not self.environments
        python = PythonRun(FUNCTION_NAME, ARGS_NAME, RESULT_NAME, bool(self._serialize_output), tuple(self._warm_imports),
                           result_inline=fast, args_inline=self._inline_args if fast else None,
                           result_in_complete=RESULT_IN_COMPLETE_LIMIT if fast else 0)
        return super()._task_spec(python=python, in_place=FUNCTION_NAME if fast else None, **decided)

    # -- the tasks cache (core/manager/tasks_cache.py) ----------------------------------------------------------
    _cache_result_name = RESULT_NAME  # kept in the cache as <key>.output, the pickled value itself

    def _cache_identity(self, module_digest: Any) -> dict[str, Any]:
        """What the cache key needs beyond the task's files (the function and arguments are inputs).

        Functions pickled by reference carry only their name, so their module's source counts too.
        """
        modules: dict[str, Any] = {}

        def note(obj: Any, depth: int) -> None:
            if callable(obj) and not isinstance(obj, type):
                mod = getattr(obj, "__module__", None)
                if isinstance(mod, str) and mod != "__main__" and mod not in modules:
                    modules[mod] = module_digest(mod)
            if depth < 3 and type(obj) in (list, tuple):
                for x in obj:
                    note(x, depth + 1)
            elif depth < 3 and type(obj) is dict:
                for x in obj.values():
                    note(x, depth + 1)

        note(self._func, 0)
        note(self._raw_args, 0)
        note(self._raw_kwargs, 0)
        inline = self._inline_args
        return {"args_inline": hashlib.sha256(inline.encode()).hexdigest() if inline is not None else None,
                "serialize": self._serialize_output, "modules": sorted(modules.items())}

    def _vine_reference(self) -> tuple[File, bool]:
        """Lets a PythonTask with a temp output be passed as another task's argument."""
        if self._output_file is None or self._output_file.kind != "temp":
            raise TaskError("only a submitted PythonTask with enable_temp_output() can be passed as an argument")
        return self._output_file, self._serialize_output

    # -- outcome ------------------------------------------------------------------------------------------------
    @property
    def output(self) -> Any:
        """The function's return value; the exception it raised; or a PythonTaskNoResult."""
        if self._decoded is _UNSET:
            value = self._decode()
            if self._state >= C.VINE_TASK_RETRIEVED:
                self._decoded = value
            return value
        return self._decoded

    def _no_result(self, why: str) -> PythonTaskNoResult:
        tail = self.std_output[-2000:]
        return PythonTaskNoResult(f"task {self.id} has no result: {why}" + (f"; its output ends with:\n{tail}" if tail else ""))

    def _decode(self) -> Any:
        if self._state < C.VINE_TASK_RETRIEVED:
            return self._no_result("it has not finished")
        if self._result != C.VINE_RESULT_SUCCESS:
            return self._no_result(f"it ended with '{self.result}' (exit code {self.exit_code})")
        f = self._output_file
        if f is None:
            return self._no_result("it has no output file")
        if f.kind == "temp":
            try:
                data = f.contents()
            except (TransferError, ValueError, OSError, TimeoutError) as exc:
                return self._no_result(f"its temp output could not be fetched: {exc}")
        else:
            data = f.buffer_data()
        if data is None:
            return self._no_result("its result file did not arrive")
        if not self._serialize_output:
            return data if self.exit_code == 0 else self._no_result(f"the function failed (exit code {self.exit_code})")
        if self.exit_code == 0:
            # The file holds exactly the pickled return value (what TaskVine writes).
            try:
                return cloudpickle.loads(data)
            except Exception as exc:  # noqa: BLE001 - e.g. a class the manager cannot import
                return self._no_result(f"its result could not be unpickled here: {type(exc).__name__}: {exc}")
        try:
            ok, value, tb = decode_result(data)  # exit 1: the failure record (core/wire/remote.py)
        except ValueError as exc:
            return self._no_result(f"its result file is unreadable ({exc})")
        return value if ok else attach_traceback(value, tb)
