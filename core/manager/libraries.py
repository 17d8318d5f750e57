"""The Manager's serverless side: library templates, installing and removing them, starting instances.

``create_library_from_functions`` packs functions into a :class:`core.api.library.LibraryTask`;
``install_library`` hands its template to the scheduler, which starts an instance per worker as
calls need one (``_send_library_start``); an instance's end is logged with its log's tail
(``_library_instance_ended``), which a failed call's ``output`` then quotes.
"""

from __future__ import annotations

import os
import time
import types
from typing import TYPE_CHECKING, Any

from .. import constants as C
from ..wire import messages as M
from ..api.files import File
from ..api.library import EXEC_MODES, LIBRARY_CONFIG_NAME, LibraryTask
from ..api.python_task import RUNNER_NAME, content_buffer, runner_file, serialize
from ..api.specs import task_spec
from ..state.libraries import LibraryInstalled, LibraryRemoved, StartLibrary

if TYPE_CHECKING:
    from .facade import Manager, WorkerLink
    from ..wire.protocol import Frame


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


class LibraryManagerMixin:
    """The Manager's serverless methods (REFERENCE §1.5)."""

    @property
    def library_logging_directory(self) -> str:
        return os.path.join(self.runtime_directory, "library-logs")  # type: ignore[attr-defined]

    def _library_templates(self) -> dict[str, LibraryTask]:
        d = self.__dict__.get("_vine_libraries")
        if d is None:
            d = self.__dict__["_vine_libraries"] = {}
        return d

    def create_library_from_functions(
        self,
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
        m: Manager = self  # type: ignore[assignment]
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
        task = LibraryTask(f'{prefix}"${{VINE_PYTHON:-python3}}" {RUNNER_NAME} library {LIBRARY_CONFIG_NAME}', library_name)
        task.set_function_exec_mode_from_string(exec_mode)
        task.add_input(runner_file(m), RUNNER_NAME)
        task.add_input(content_buffer(m, data), LIBRARY_CONFIG_NAME)
        if poncho_env is not None:
            task.add_environment(self._environment_file(poncho_env))
        for key, value in (library_resources or {}).items():
            if key == "slots":
                task.set_function_slots(int(value))
            else:
                getattr(task, f"set_{key}")(value)
        return task

    def _environment_file(self, env: Any) -> File:
        m: Manager = self  # type: ignore[assignment]
        if isinstance(env, File):
            return env
        path = os.fspath(env)
        if os.path.isdir(path):
            return m.declare_file(path, cache=True)
        return m.declare_poncho(m.declare_file(path, cache=True), cache=True)

    def install_library(self, task: LibraryTask) -> None:
        """Make ``task``'s functions callable; instances start on workers as calls need them."""
        m: Manager = self  # type: ignore[assignment]
        if not isinstance(task, LibraryTask):
            raise TypeError(f"install_library takes a LibraryTask, got {type(task).__name__}")
        name = task.name
        for mount in task.inputs + task.outputs:
            mount.file = m._remember(mount.file)
        task.environments = [m._remember(f) for f in task.environments]
        task._state = C.VINE_TASK_READY  # a template: its definition no longer changes
        task._manager = m
        self._library_templates()[name] = task
        m._logs.transaction(f"LIBRARY {name} WAITING")
        m._post(LibraryInstalled(time.time(), task_spec(task)))

    def remove_library(self, name: str) -> None:
        """Stop every instance of library ``name``; calls still waiting for it end with ``missing library``."""
        m: Manager = self  # type: ignore[assignment]
        if self._library_templates().pop(name, None) is not None:
            m._post(LibraryRemoved(time.time(), name))

    def check_library_exists(self, name: str) -> bool:
        """True while library ``name`` is installed (and not given up on after repeated failures)."""
        m: Manager = self  # type: ignore[assignment]
        if name not in self._library_templates():
            return False
        return bool(m._call(lambda: name in m._state.libs.templates))

    def _library_known(self, name: str) -> bool:
        return name in self._library_templates()

    def _library_failure_reason(self, name: str) -> str | None:
        m: Manager = self  # type: ignore[assignment]
        removed = m._state.libs.removed_reason.get(name)
        last = self.__dict__.get("_vine_library_failures", {}).get(name)
        parts = [p for p in (removed, f"last exit: {last}" if last else None) if p]
        return "; ".join(parts) if parts else None

    # -- I/O thread --------------------------------------------------------------------------------------------
    def _send_library_start(self, link: WorkerLink, ins: StartLibrary) -> None:
        m: Manager = self  # type: ignore[assignment]
        task = self._library_templates().get(ins.name)  # the scheduler holds its spec; the message is made from the task
        if task is None:
            from ..state.scheduler import TaskFinished

            m._apply(TaskFinished(time.time(), link.id, ins.instance_id, C.VINE_RESULT_FORSAKEN))
            return
        spec = task._task_spec()
        spec["id"] = ins.instance_id
        spec["resources"] = ins.allocation.to_dict()
        spec["outputs"] = []
        spec["library"] = {"name": ins.name, "mode": getattr(task, "exec_mode", "fork"), "slots": ins.slots}
        m._logs.transaction(f"LIBRARY {ins.instance_id} SENT {link.id}")
        m._logs.debug(f"starting library {ins.name!r} as instance {ins.instance_id} on {link.id} with {ins.slots} slot(s)")
        link.conn.send(M.Task(spec))

    def _library_instance_ended(self, link: WorkerLink, frame: Frame) -> None:
        m: Manager = self  # type: ignore[assignment]
        ended = frame.message
        assert isinstance(ended, M.Complete)  # a library instance's end (links.py dispatched it)
        name = ended.library or "?"
        iid = ended.id
        reason = ended.reason or f"exit status {ended.exit_code}"
        m._logs.transaction(f"LIBRARY {iid} FAILURE {link.id}")
        m._logs.debug(f"library {name!r} instance {iid} on {link.id} ended: {reason}")
        log_text = frame.payload.decode("utf-8", errors="replace") if frame.payload else ""
        try:
            os.makedirs(self.library_logging_directory, exist_ok=True)
            with open(os.path.join(self.library_logging_directory, f"library-task-{-iid}.log"), "w") as fh:
                fh.write(log_text)
        except OSError:
            pass
        tail = log_text.strip()[-1500:]
        failures = self.__dict__.setdefault("_vine_library_failures", {})
        log_tail = f"; its log ends with:\n{tail}" if tail and tail not in reason else ""
        failures[name] = f"instance {iid} on {link.hostname}: {reason}{log_tail}"
