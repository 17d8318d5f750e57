"""The Manager's serverless side: building libraries, their installed templates, starting instances.

:func:`create_library` (``Manager.create_library_from_functions``) packs functions into a
:class:`core.api.library.LibraryTask`. :class:`ManagerLibraries`, a member of the Manager, holds the
installed templates by name: ``install`` hands one to the scheduler, which starts an instance per
worker as calls need one (``send_start``, in the I/O thread); an instance's end is logged with its
log's tail (``instance_ended``), which a failed call's ``output`` then quotes (``failure_reason``).
"""

from __future__ import annotations

import os
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .. import constants as C
from ..api.files import File, TaskHost
from ..api.library import EXEC_MODES, LIBRARY_CONFIG_NAME, LIBRARY_RUNNER_NAME, LibraryTask, library_runner_file
from ..api.python_task import RUNNER_NAME, content_buffer, runner_file, serialize
from ..api.specs import task_spec
from ..state.libraries import LibraryInstalled, LibraryRemoved, StartLibrary
from ..state.scheduler import TaskFinished
from ..wire import messages as M

if TYPE_CHECKING:
    from ..state.events import Event
    from ..state.scheduler import SchedulerState
    from ..wire.protocol import Frame
    from .logs import RunLogs


class FileDeclarer(TaskHost, Protocol):
    """What building a library needs of a manager: declaring the files the library is made of."""

    def declare_poncho(self, tarball: File, cache: Any = ..., peer_transfer: bool = ...) -> File: ...


def _hoisted(items: list[Any]) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    for item in items:
        if isinstance(item, types.ModuleType):
            out.append(("module", item.__name__, None))
        elif isinstance(item, str):
            out.append(("module", item, None))
        elif hasattr(item, "__name__"):
            out.append(("object", item.__name__, item))
        else:
            raise ValueError(f"cannot hoist {item!r}: give modules, module names, functions or classes")
    return out


def create_library(
    manager: FileDeclarer,
    library_name: str,
    *function_list: Any,
    poncho_env: Any = None,
    init_command: str | None = None,
    add_env: bool = True,
    hoisting_modules: list[Any] | None = None,
    import_modules: list[Any] | None = None,
    exec_mode: str = "fork",
    library_context_info: list[Any] | None = None,
    library_resources: dict[str, float] | None = None,
) -> LibraryTask:
    """A LibraryTask serving ``function_list`` (by their ``__name__``); install it with ``install_library``.

    ``hoisting_modules``/``import_modules``: modules imported once when the library starts and
    made globals of every function (functions and classes listed are made globals too).
    ``library_context_info=[fn, args, kwargs]``: ``fn`` runs once at start and returns a dict of
    variables that calls read with ``load_variable_from_library(name)``. ``exec_mode``: ``fork``
    (a child per call, ``function_slots`` at once) or ``direct`` (in the library process, one at a
    time). ``poncho_env``: a directory or tarball with ``bin/run_in_env`` the library runs in.
    ``add_env=True`` would pack the current environment in TaskVine; here the worker's own
    interpreter is used when no ``poncho_env`` is given, so it changes nothing.
    ``init_command`` prefixes the library's command line (e.g. ``"source setup.sh &&"``).
    """
    if not function_list:
        raise ValueError("create_library_from_functions needs at least one function")
    if exec_mode not in EXEC_MODES:
        raise ValueError(f"exec_mode must be 'fork' or 'direct', got {exec_mode!r}")
    functions: dict[str, Any] = {}
    for fn in function_list:
        if not callable(fn) or not hasattr(fn, "__name__"):
            raise ValueError(f"{fn!r} is not a named function")
        functions[fn.__name__] = fn
    if library_context_info is not None:
        if not isinstance(library_context_info, (list, tuple)) or not library_context_info or not callable(library_context_info[0]):
            raise ValueError("library_context_info must be [function, args, kwargs]")
    config = {
        "name": library_name,
        "functions": functions,
        "hoisted": _hoisted(list(hoisting_modules or []) + list(import_modules or [])),
        "context": list(library_context_info) if library_context_info is not None else None,
        "mode": exec_mode,
    }
    data = serialize(config, f"functions of library {library_name!r}")
    prefix = f"{init_command} " if init_command else ""
    task = LibraryTask(f'{prefix}"${{VINE_PYTHON:-python3}}" {LIBRARY_RUNNER_NAME} {LIBRARY_CONFIG_NAME}', library_name)
    task.set_function_exec_mode_from_string(exec_mode)
    task.add_input(library_runner_file(manager), LIBRARY_RUNNER_NAME)
    task.add_input(runner_file(manager), RUNNER_NAME)  # remote.py: the library runner imports it from beside itself
    task.add_input(content_buffer(manager, data), LIBRARY_CONFIG_NAME)
    if poncho_env is not None:
        task.add_environment(environment_file(manager, poncho_env))
    for key, value in (library_resources or {}).items():
        if key == "slots":
            task.set_function_slots(int(value))
        else:
            getattr(task, f"set_{key}")(value)
    return task


def environment_file(manager: FileDeclarer, env: Any) -> File:
    """The File of an environment given as a File, a directory, or a poncho/conda-pack tarball."""
    if isinstance(env, File):
        return env
    path = os.fspath(env)
    if os.path.isdir(path):
        return manager.declare_file(path, cache=True)
    return manager.declare_poncho(manager.declare_file(path, cache=True), cache=True)


class ManagerLibraries:
    """The libraries a Manager has installed, by name, and how their instances last ended.

    A member of :class:`core.manager.Manager`, which lends it what it needs at construction: the
    scheduler state (read only), the logs, and its own ``remember``/``post``/``call``/``apply``.
    """

    def __init__(self, state: SchedulerState, logs: RunLogs, log_dir: str, remember: Callable[[File], File],
                 post: Callable[[Event], None], call: Callable[..., Any], apply: Callable[..., None]) -> None:
        self.log_dir = log_dir  # library-logs/ under the run's directory: one log per ended instance
        self.templates: dict[str, LibraryTask] = {}  # installed, by name (the scheduler keeps its own copy)
        self.failures: dict[str, str] = {}  # library name -> how its last instance ended (quoted to failed calls)
        self._state = state
        self._logs = logs
        self._remember = remember
        self._post = post
        self._call = call
        self._apply = apply

    def install(self, task: LibraryTask, manager: Any) -> None:
        """Make ``task``'s functions callable; instances start on workers as calls need them."""
        if not isinstance(task, LibraryTask):
            raise TypeError(f"install_library takes a LibraryTask, got {type(task).__name__}")
        name = task.name
        for mount in (*task.inputs, *task.outputs):
            mount.file = self._remember(mount.file)
        task.environments = [self._remember(f) for f in task.environments]
        task._state = C.VINE_TASK_READY  # a template: its definition no longer changes
        task._manager = manager
        self.templates[name] = task
        self._logs.transaction(f"LIBRARY {name} WAITING")
        self._post(LibraryInstalled(time.time(), task_spec(task)))

    def remove(self, name: str) -> None:
        """Stop every instance of library ``name``; calls still waiting for it end with ``missing library``."""
        if self.templates.pop(name, None) is not None:
            self._post(LibraryRemoved(time.time(), name))

    def exists(self, name: str) -> bool:
        """True while library ``name`` is installed (and not given up on after repeated failures)."""
        if name not in self.templates:
            return False
        return bool(self._call(lambda: name in self._state.libs.templates))

    def failure_reason(self, name: str) -> str | None:
        """Why library ``name`` was removed and how its last instance ended, for a failed call's output."""
        removed = self._state.libs.removed_reason.get(name)
        last = self.failures.get(name)
        parts = [p for p in (removed, f"last exit: {last}" if last else None) if p]
        return "; ".join(parts) if parts else None

    # -- I/O thread --------------------------------------------------------------------------------------------
    def start_message(self, worker_id: str, ins: StartLibrary) -> M.Message | None:
        """The ``task`` message that starts instance ``ins`` on ``worker_id`` (None: the library is gone,
        and the instance ends at once as forsaken)."""
        task = self.templates.get(ins.name)  # the scheduler holds its spec; the message is made from the task
        if task is None:
            self._apply(TaskFinished(time.time(), worker_id, ins.instance_id, C.VINE_RESULT_FORSAKEN))
            return None
        spec = task._task_spec(id=ins.instance_id, resources=ins.allocation.to_dict(),
                               library=M.LibraryStart(ins.name, getattr(task, "exec_mode", "fork"), ins.slots))
        self._logs.transaction(f"LIBRARY {ins.instance_id} SENT {worker_id}")
        self._logs.debug(f"starting library {ins.name!r} as instance {ins.instance_id} on {worker_id} with {ins.slots} slot(s)")
        return M.Task(spec)

    def instance_ended(self, worker_id: str, hostname: str, frame: Frame) -> None:
        """An instance's ``complete``: logged, its log kept in ``log_dir``, its end remembered for its calls."""
        ended = frame.message
        assert isinstance(ended, M.Complete)  # a library instance's end (links.py dispatched it)
        name = ended.library or "?"
        iid = ended.id
        reason = ended.reason or f"exit status {ended.exit_code}"
        self._logs.transaction(f"LIBRARY {iid} FAILURE {worker_id}")
        self._logs.debug(f"library {name!r} instance {iid} on {worker_id} ended: {reason}")
        log_text = frame.payload.decode("utf-8", errors="replace") if frame.payload else ""
        try:
            os.makedirs(self.log_dir, exist_ok=True)
            with open(os.path.join(self.log_dir, f"library-task-{-iid}.log"), "w") as fh:
                fh.write(log_text)
        except OSError:
            pass
        tail = log_text.strip()[-1500:]
        log_tail = f"; its log ends with:\n{tail}" if tail and tail not in reason else ""
        self.failures[name] = f"instance {iid} on {hostname}: {reason}{log_tail}"
