"""The worker side of parslvine: run one Parsl app call and return its result, Parsl-serialized.

::

    manager (TaskVineExecutor.submit)             worker
    ─────────────────────────────────             ──────
    encode_code(func), encode_data(               regular:    a fork of the worker's fork server
      {"args", "kwargs"}), name map          ──►              (the lean parsl imported there once)
                                                  serverless: the warm library process (direct)
                                                  run_parsl_call(...): remap File paths to the
                                                  sandbox names, call func, serialize the value
    future.set_result / set_exception  ◄──────── or a RemoteExceptionWrapper of what it raised

The function travels as cloudpickle's bytes and the data as pickle's where that means what Parsl's
dill would (:func:`encode_code`, :func:`encode_data`; Parsl's own serialization otherwise). The value
comes back as bytes already serialized that way (with the names of any placeholder outputs, see
:func:`run_parsl_call`), so the manager's only work is :func:`decode_data`; an exception keeps its
type because Parsl's own ``RemoteExceptionWrapper`` carries it (with its traceback and cause).

``python -m parslvine.runner FUNCTION ARGS MAP RESULT`` runs the same thing in a fresh interpreter
(used in regular mode when ``init_command`` must run first).
"""

from __future__ import annotations

import functools
import os
import pickle
import sys
from typing import Any

# The lean parsl first (see parslvine.lean): a serverless library imports this module when it
# unpickles its function, before any of its own imports, and a fresh ``python -m parslvine.runner``
# starts with it; either would otherwise load all of Parsl (~60 MB, 1-2 s) for what a call needs.
# Where Parsl is already imported (the user's process) this changes nothing.
from . import lean  # noqa: F401

# isort: split

# Imported when this module is: on workers the fork server (warm imports) or the library has
# already paid for them, so a call never imports Parsl itself. ``parsl.serialize`` (dill, and with
# it tempfile, random, shutil, bz2, lzma: a larger process to fork, and random's reseed in every
# child) only where a call's bytes need it: see encode_code and encode_data.
import cloudpickle
from parsl.app.errors import RemoteExceptionWrapper
from parsl.data_provider.files import File

PICKLE_TAG = b"parslvine-pickle\n"
CODE_TAG = b"parslvine-cloudpickle\n"


def encode_code(func: Any, buffer_threshold: int = 1 << 20) -> bytes:
    """An app's function for the workers: cloudpickle's bytes, or ``parsl.serialize(func)``.

    Parsl sends functions with dill (``DillCallableSerializer``): by value when defined in
    ``__main__`` or not importable, by reference otherwise; cloudpickle does the same, and the
    workers already have it (every fork server and library imports it), while dill is one more
    import of ~1.4 MB and 16 mappings in every process that forks a call (and brings tempfile and
    random, whose reseed runs in every fork). So: cloudpickle when Parsl's code serializers are its
    defaults (no plugin registered) and it can pickle the function; otherwise Parsl's own way,
    which the workers then import for that call (:func:`needs_parsl_serialize`). One pickling per
    function, kept for the last 128 (Parsl keeps its own the same way: functions are taken to be
    immutable). ``buffer_threshold``: Parsl's size over which it logs a warning.
    """
    if _default_code_methods():
        try:
            return _cloudpickled(func)
        except Exception:  # noqa: BLE001 - not picklable (or not hashable) here: dill may manage
            pass
    from parsl.serialize import serialize

    return serialize(func, buffer_threshold=buffer_threshold)


@functools.lru_cache(maxsize=128)
def _cloudpickled(func: Any) -> bytes:
    return CODE_TAG + cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)


def decode_code(data: bytes) -> Any:
    """The inverse of :func:`encode_code` (also takes anything ``parsl.serialize`` made)."""
    if data.startswith(CODE_TAG):
        return cloudpickle.loads(memoryview(data)[len(CODE_TAG):])
    from parsl.serialize import deserialize

    return deserialize(data)


def needs_parsl_serialize(*encoded: bytes) -> bool:
    """Whether any of these bytes (from encode_code / encode_data) came from ``parsl.serialize``."""
    return any(not (data.startswith(CODE_TAG) or data.startswith(PICKLE_TAG)) for data in encoded)


def _parsl_defaults(registry: str, identifier: bytes) -> bool:
    """Whether Parsl's serializer registry ``registry`` (``methods_for_code`` / ``_data``, a dict it
    changes in place when a plugin registers) holds only its default, ``identifier``. Read where
    parsl.serialize is imported; where it is not (a worker's fork server), nothing can have
    registered a plugin."""
    facade = sys.modules.get("parsl.serialize.facade")
    if facade is None:
        return True
    methods = getattr(facade, registry)
    return len(methods) == 1 and identifier in methods


def _default_code_methods() -> bool:
    return _parsl_defaults("methods_for_code", b"C2")  # DillCallableSerializer


def encode_data(obj: Any) -> bytes:
    """``parsl.serialize(obj)``, or plain pickle when that gives the same thing much faster.

    Parsl serializes data with dill, whose pure-Python pickler costs ~60 µs even for a small tuple;
    for everything the C pickler handles *by reference* the bytes mean the same. So: plain pickle
    when Parsl's data serializers are its defaults (no user plugin registered), the object pickles,
    and nothing refers to ``__main__`` (which dill sends by value); otherwise Parsl's own way.
    """
    if _default_data_methods():
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - not picklable: dill may manage
            data = b""
        if data and b"__main__" not in data:
            return PICKLE_TAG + data
    from parsl.serialize import serialize

    return serialize(obj)


def decode_data(data: bytes) -> Any:
    """The inverse of :func:`encode_data` (also takes anything ``parsl.serialize`` made)."""
    if data.startswith(PICKLE_TAG):
        return pickle.loads(memoryview(data)[len(PICKLE_TAG):])
    from parsl.serialize import deserialize

    return deserialize(data)


def _default_data_methods() -> bool:
    return _parsl_defaults("methods_for_data", b"02")  # DillSerializer


# What a worker imports once so that calls skip it (PythonTask.set_warm_imports, library imports).
# ``parslvine.lean`` comes first: in the fork server it makes the rest load only what a call needs,
# not all of Parsl (see that module; a fork costs in proportion to the memory the server maps). An
# app whose function needs more (a bash app's lives in ``parsl.app.bash``) loads it when the server
# first unpickles that function, once per worker.
WARM_IMPORTS = ["parslvine.lean", "parsl.app.errors", "parsl.data_provider.files", "parslvine.runner"]
PARSL_SERIALIZE = "parsl.serialize"  # warm too for a call whose bytes need it (needs_parsl_serialize)


def _remap(file: Any, names: dict[str, str]) -> None:
    """Point a Parsl File at its name in this sandbox (only files the manager staged or mapped)."""
    if not isinstance(file, File):
        return
    if file.scheme == "file" or file.local_path:
        try:
            where = file.filepath
        except ValueError:
            return
        if where in names:
            file.local_path = names[where]


def remap_files(args: Any, kwargs: dict[str, Any], names: dict[str, str]) -> None:
    """Apply the manager's {local path: sandbox name} map to File arguments, inputs, outputs and std streams."""
    if not names:
        return
    for a in args:
        _remap(a, names)
    for key, value in kwargs.items():
        if key in ("inputs", "outputs"):
            for f in value or ():
                _remap(f, names)
        elif key in ("stdout", "stderr"):
            if value:
                # Imported here, not with the rest: parsl.utils (subprocess, setproctitle, ...) is 1.1 MB
                # and 21 mappings more in every fork server, for the std streams of bash apps, whose
                # function (parsl.app.bash) has loaded all of Parsl in that process anyway.
                from parsl.utils import get_std_fname_mode

                fname, mode = get_std_fname_mode(key, value)
                if fname in names:
                    kwargs[key] = (names[fname], mode)
        else:
            _remap(value, names)


# A call's reply without placeholders (the common case) is this tag and its result's bytes: one
# concatenation in the call's fork, where a pickle of the pair cost a pickler's set-up.
REPLY_TAG = b"parslvine-reply\n"


def encode_reply(result: bytes, placeholders: list[str]) -> bytes:
    """What :func:`run_parsl_call` returns for ``result`` and the placeholder outputs it made."""
    if not placeholders:
        return REPLY_TAG + result
    return pickle.dumps((result, placeholders), protocol=pickle.HIGHEST_PROTOCOL)


def decode_reply(data: bytes) -> tuple[bytes, list[str]]:
    """``(result, placeholders)`` from a reply of :func:`run_parsl_call` (or of an older runner,
    which always pickled the pair)."""
    if data.startswith(REPLY_TAG):
        return data[len(REPLY_TAG):], []
    result, placeholders = pickle.loads(data)
    return result, placeholders


def run_parsl_call(function: bytes, arguments: bytes, names: dict[str, str], outputs: list[str], app: Any = None) -> bytes:
    """Run one app call in the current directory; returns its reply (:func:`encode_reply`, read by
    :func:`decode_reply`): the result and the placeholders made.

    ``result`` is the Parsl-serialized value, or a ``RemoteExceptionWrapper`` of what the call
    raised. Never raises: any failure, including one to deserialize the function, is wrapped so
    the user's process re-raises it with its own type. ``outputs`` are the sandbox names of the
    staged output files; one the app did not write is created empty here, so the worker's
    output check passes and the app's own outcome (often the exception that kept it from
    writing) reaches the user; the manager removes those placeholders (``placeholders``) again,
    so a missing output stays missing, as on a shared filesystem. ``app`` is the function already
    deserialized from ``function`` (by :class:`BoundParslCall`).
    """
    # (Every line here runs in a fresh fork per regular call, where each object it touches costs a
    # copy-on-write fault: the common case, no files, does nothing it does not need.)
    if not outputs:
        return REPLY_TAG + _call(function, arguments, names, app)
    for name in outputs:  # the app writes its outputs where it expects them, directories included
        parent = os.path.dirname(name)
        if parent:
            os.makedirs(parent, exist_ok=True)
    result = _call(function, arguments, names, app)
    placeholders = []
    for name in outputs:
        if not os.path.lexists(name):
            with open(name, "wb"):
                pass
            placeholders.append(name)
    return encode_reply(result, placeholders)


class BoundParslCall:
    """:func:`run_parsl_call` with its app's serialized function bound in (regular mode's PythonTask).

    It pickles as the app's bytes and deserializes them when it is *unpickled*: the worker's fork
    server unpickles a task's function once per worker (keyed by its content) and keeps it, so every
    forked call finds the app loaded, its module imported, instead of deserializing it again (which,
    for an app defined in an importable module, imports that module anew in every call).
    """

    # Its pickle is its app's bytes and nothing else: a PythonTask pickles and content-hashes it once
    # (core.api.python_task.function_file), not per call, when calls share one BoundParslCall.
    vine_pickle_once = True

    def __init__(self, function: bytes) -> None:
        self.function = function
        self.app: Any = None  # the deserialized app, once unpickled (None: deserialize in the call)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _bind_app, (self.function,)

    def __call__(self, arguments: bytes, names: dict[str, str], outputs: list[str]) -> bytes:
        return run_parsl_call(self.function, arguments, names, outputs, app=self.app)


def _bind_app(function: bytes) -> BoundParslCall:
    bound = BoundParslCall(function)
    try:
        bound.app = decode_code(function)
    except BaseException:  # noqa: BLE001 - the call deserializes it again and reports the failure as its own
        bound.app = None
    return bound


def _call(function: bytes, arguments: bytes, names: dict[str, str], app: Any = None) -> bytes:
    try:
        func = app if app is not None else decode_code(function)
        call = decode_data(arguments)
        args, kwargs = call["args"], call["kwargs"]  # fresh from the unpickling: ours to change
        if names:
            remap_files(args, kwargs, names)
        result: Any = func(*args, **kwargs)
    except BaseException:  # noqa: BLE001 - even SystemExit is the app's outcome, reported to the user
        result = RemoteExceptionWrapper(*sys.exc_info())
    try:
        return encode_data(result)
    except Exception:  # noqa: BLE001 - an unserializable value is the call's failure
        from parsl.serialize import serialize

        return serialize(RemoteExceptionWrapper(*sys.exc_info()))


def main(argv: list[str]) -> int:
    """``python -m parslvine.runner FUNCTION ARGS MAP RESULT``: the call from files, the result to a file."""
    if len(argv) != 5:
        sys.stderr.write("usage: python -m parslvine.runner FUNCTION ARGS MAP RESULT\n")
        return 2
    function_path, args_path, map_path, result_path = argv[1:]
    with open(function_path, "rb") as fh:
        function = fh.read()
    with open(args_path, "rb") as fh:
        arguments = fh.read()
    with open(map_path, "rb") as fh:
        names, outputs = pickle.load(fh)
    data = run_parsl_call(function, arguments, names, outputs)
    tmp = result_path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
