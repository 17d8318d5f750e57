"""Serverless execution: ``LibraryTask`` (a warm process of functions) and ``FunctionCall``.

::

    m.create_library_from_functions("lib", f, g, import_modules=[numpy], exec_mode="fork")
          │ functions, hoisted modules and context cloudpickled into one content-named buffer
    m.install_library(lib) ──► scheduler template ──► an instance per worker, started on demand:
                                                       `python3 .vine_library_runner.py .vine_library`
    m.submit(FunctionCall("lib", "f", 1, 2)) ──► allocated nothing, takes one of the instance's slots
          └──► worker ──(unix socket)──► library: f(1, 2) in-process (direct) or in a fork (fork)
    call.output ◄── result envelope, returned inline with the completion (no file transfer)

With ``call.enable_temp_output()`` the envelope of a successful call is left on the worker as a temp
file instead: pass the call itself as an argument of another FunctionCall or PythonTask and the value
goes worker to worker (peer transfer or, on the same worker, a link), never through the manager;
``call.output`` fetches it only when read. A call whose function *raises* makes no temp: it ends with
exit code 1 and its exception envelope inline, so ``call.output`` is the exception without a fetch,
and tasks that take the call as an argument end with ``input missing`` instead of running on an
exception. The temp is recovered like any other: if the worker holding its only copy is lost, the call
runs again (lineage recovery).

The library imports its modules and runs ``library_context_info`` once per instance, so a call pays
for neither. A library that keeps exiting is restarted at most ``max-library-retries`` times
(default 15; values below 1 mean 1); then it is removed and its waiting calls end with
``missing library``, and ``FunctionCall.output`` is a :class:`FunctionCallNoResult` saying why.

A call's ``output`` is the function's return value, or the exception it raised (with the remote
traceback as ``__vine_traceback__`` and ``__cause__``). Results travel in tagged envelopes, so a user
dict with a ``"Result"`` key is returned as it is (TaskVine unwraps it, REFERENCE §8.13).
Print output of calls goes to the library's log (``library_logging_directory``), not to the call.
"""

from __future__ import annotations

import base64
import os
import pickle
from typing import TYPE_CHECKING, Any

from .. import constants as C
from ..errors import TaskError, TransferError, VineError
from ..wire.library_runner import load_variable_from_library as _load_variable
from ..wire.messages import CallRef, TaskDefinition
from ..wire.remote import decode_result
from .files import File
from .python_task import ARGS_NAME, RESULT_NAME, attach_traceback, extract_references, plain_values, script_file, serialize
from .task import Task

if TYPE_CHECKING:
    from .files import TaskHost

LIBRARY_CONFIG_NAME = ".vine_library"
# The library process's script (core/wire/library_runner.py); it runs beside .vine_runner.py, which it imports.
LIBRARY_RUNNER_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wire", "library_runner.py")
LIBRARY_RUNNER_NAME = ".vine_library_runner.py"
INLINE_ARGS_LIMIT = 48 << 10  # larger arguments travel as an input file instead of inside the task message
EXEC_MODES = ("fork", "direct")


class FunctionCallNoResult(VineError):
    """What ``FunctionCall.output`` gives when the call ended without a result (its message says why)."""


class LibraryError(VineError):
    """A library cannot be created or installed as asked."""


def load_variable_from_library(name: str) -> Any:
    """Inside a FunctionCall: a variable from the dict the library's context function returned."""
    return _load_variable(name)


def library_runner_file(manager: TaskHost) -> File:
    """The library process's script (core/wire/library_runner.py)."""
    return script_file(manager, LIBRARY_RUNNER_PATH)


class LibraryTask(Task):
    """A long-lived process holding functions that FunctionCalls run; made by ``create_library_from_functions``.

    Never returned by ``wait``. ``set_function_slots(n)`` sets how many calls run at once in one
    instance (default: its allocated cores; always 1 in ``direct`` mode).
    """

    def __init__(self, command: str, name: str) -> None:
        super().__init__(command)
        if not isinstance(name, str) or not name:
            raise ValueError(f"a library needs a non-empty name, got {name!r}")
        self.set_library_provided(name)
        self.function_slots = 0
        self.exec_mode = "fork"

    @property
    def name(self) -> str:
        return str(self.library_provided)

    def set_function_slots(self, slots: int) -> None:
        if int(slots) < 0:
            raise ValueError("function slots must be >= 0 (0: one per allocated core)")
        self.function_slots = int(slots)

    def set_function_exec_mode_from_string(self, mode: str) -> None:
        if mode not in EXEC_MODES:
            raise ValueError(f"exec mode must be 'fork' or 'direct', got {mode!r}")
        self.exec_mode = mode

    set_exec_mode = set_function_exec_mode_from_string


class FunctionCall(Task):
    """Call ``fn_name(*args, **kwargs)`` in library ``library_name``; ``output`` is the value (or exception)."""

    def __init__(self, library_name: str, fn_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(f"function_call {library_name} {fn_name}")
        self.set_library_required(str(library_name))
        self._fn_name = str(fn_name)
        self._exec_method: str | None = None
        self.set_fn_args(list(args), kwargs)
        self._inline_args: str | None = None
        self._failure_reason: str | None = None
        self._decoded: Any = None
        self._has_decoded = False
        self._temp_output = False
        self._output_file: File | None = None

    def set_fn_args(self, args: list[Any] | tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> None:
        self._mutable()
        self._raw_args, self._raw_kwargs = tuple(args), dict(kwargs or {})  # futures among them are resolved at submit

    def set_exec_method(self, method: str) -> None:
        """Run this call ``fork``ed or ``direct``ly in the library, whatever the library's default."""
        if method not in EXEC_MODES:
            raise ValueError(f"exec method must be 'fork' or 'direct', got {method!r}")
        self._exec_method = method

    def enable_temp_output(self) -> None:
        """Leave a successful call's result on the worker as a temp file (usable as another task's argument).

        ``output`` still works (the temp is fetched when first read). A call that raises makes no
        temp: its exception comes back inline (exit code 1) and its consumers end with ``input missing``.
        """
        self._mutable()
        self._temp_output = True

    def disable_temp_output(self) -> None:
        self._mutable()
        self._temp_output = False

    @property
    def output_file(self) -> File | None:
        """The temp File holding the result with ``enable_temp_output`` (set at submit); else None (inline)."""
        return self._output_file

    def _vine_reference(self) -> tuple[File, bool]:
        """Lets a FunctionCall with a temp output be passed as another task's argument."""
        if self._output_file is None:
            raise TaskError(f"only a submitted FunctionCall with enable_temp_output() can be passed as an argument "
                            f"(call to {self.library_name}.{self._fn_name})")
        return self._output_file, True

    @property
    def library_name(self) -> str:
        return str(self.library_required)

    @property
    def function_name(self) -> str:
        return self._fn_name

    # -- submission ---------------------------------------------------------------------------------------
    def _prepare_submit(self, manager: TaskHost) -> None:
        if not manager._library_known(self.library_name):
            raise TaskError(f"library {self.library_name!r} is not installed; create it with create_library_from_functions "
                            "and install_library before submitting calls to it")
        if plain_values(self._raw_args) and plain_values(self._raw_kwargs):
            # Nothing in them can be a reference to another task's output, and the C pickler
            # writes them as cloudpickle would: skip the walk and cloudpickle's own set-up (about
            # a tenth of a small call's cost in the submitting thread, profiled under parsl-perf).
            data = pickle.dumps((list(self._raw_args), dict(self._raw_kwargs), []), protocol=pickle.HIGHEST_PROTOCOL)
        else:
            call_args, call_kwargs, refs, ref_inputs = extract_references(self._raw_args, self._raw_kwargs)
            for f, remote in ref_inputs:
                self.add_input(f, remote)
            data = serialize((call_args, call_kwargs, refs), f"arguments of {self._fn_name}")
        if len(data) <= INLINE_ARGS_LIMIT:
            self._inline_args = base64.b64encode(data).decode()
        else:
            self.add_input(manager.declare_buffer(data), ARGS_NAME)
        if self._temp_output:
            self._output_file = manager.declare_temp()
            # success_only: a call that raised leaves no temp, so no consumer runs on its exception.
            self.add_output(self._output_file, RESULT_NAME, success_only=True)

    def _task_spec(self, **decided: Any) -> TaskDefinition:
        call = CallRef(self.library_name, self._fn_name, self._inline_args, None if self._inline_args is not None else ARGS_NAME,
                       self._exec_method, RESULT_NAME if self._output_file is not None else None)
        return super()._task_spec(function_call=call, **decided)

    def _finalize_done(self, manager: TaskHost) -> None:
        if self._result != C.VINE_RESULT_SUCCESS:
            self._failure_reason = manager._library_failure_reason(self.library_name)
        if self._output_file is not None:
            return  # its producer may be re-run to recover the temp: keep its argument file
        for m in self.inputs:
            if m.remote_name == ARGS_NAME:
                manager.undeclare_file(m.file)  # big arguments: nothing needs the manager's copy any more

    # -- outcome --------------------------------------------------------------------------------------------------
    @property
    def std_output(self) -> str:
        """Calls print into their library's log; this is always empty."""
        return ""

    @property
    def output(self) -> Any:
        """The return value; the exception the function raised; or a FunctionCallNoResult."""
        if not self._has_decoded:
            value = self._decode()
            if self._state >= C.VINE_TASK_RETRIEVED:
                self._decoded, self._has_decoded = value, True
            return value
        return self._decoded

    def _decode(self) -> Any:
        if self._state < C.VINE_TASK_RETRIEVED:
            return FunctionCallNoResult(f"call {self.id} has not finished")
        data = self._stdout
        if self._result == C.VINE_RESULT_SUCCESS and not data and self._exit_code == 0 and self._output_file is not None:
            try:
                data = self._output_file.contents()
            except (TransferError, ValueError, OSError, TimeoutError) as exc:
                return FunctionCallNoResult(f"call {self.id}: its temp output could not be fetched: {exc}")
        if self._result != C.VINE_RESULT_SUCCESS or not data:
            why = f"call {self.id} to {self.library_name}.{self._fn_name} ended with '{self.result}'"
            if self._result == C.VINE_RESULT_SUCCESS:
                why += f" but no result (exit status {self.exit_code})"
            if self._failure_reason:
                why += f": {self._failure_reason}"
            return FunctionCallNoResult(why)
        try:
            ok, value, tb = decode_result(data)
        except ValueError as exc:
            return FunctionCallNoResult(f"call {self.id}: unreadable result ({exc})")
        return value if ok else attach_traceback(value, tb)
