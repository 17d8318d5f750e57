"""Freezing a user's task into the spec the scheduler reads (:mod:`core.state.spec`).

``Manager.submit`` calls :func:`task_spec` once, after the task got its id and its last inputs
(``submit_finalize``, a PythonTask's serialised function); the scheduler never sees the ``Task``.
Microsecond times of the user API (``set_time_start``/``set_time_end``) become seconds here, the
one place the units change. A file's spec is made once per ``File`` and shared by every task that
uses it (made again only if the file's mode changed since).
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from ..state.resources import Resources
from ..state.spec import NO_OPTIONS, UNSET, FileSpec, MinitaskSpec, MountSpec, TaskKind, TaskOptions, TaskSpec, task_spec_unchecked
from .files import File
from .library import FunctionCall, LibraryTask
from .python_task import PythonTask
from .task import Mount, Task


def file_spec(f: File) -> FileSpec:
    """The frozen spec of ``f``: made once and kept on the File while its mode and peer-transfer
    flag (the only parts a user may still change) stay the same."""
    cached: FileSpec | None = getattr(f, "_frozen_spec", None)
    if cached is not None and cached.mode == f.mode and cached.peer_transfer == f.peer_transfer:
        return cached
    minitask = None
    if f.kind == "minitask":
        t = f.minitask
        if t is None:
            raise ValueError(f"{f!r} is a mini-task file without its task")
        minitask = MinitaskSpec(t.command, tuple(t.env.items()), str(f.minitask_output),
                                tuple(_mount(m) for m in t.inputs))
    spec = FileSpec(f.cache_name, f.kind, f.source(), f.level, f.peer_transfer, f.mode, minitask)  # type: ignore[arg-type]
    try:
        f._frozen_spec = spec  # type: ignore[attr-defined]
    except AttributeError:  # a File without room for it (slots): made again next time, which is only slower
        pass
    return spec


def _mount(m: Mount) -> MountSpec:
    return MountSpec(file_spec(m.file), m.remote_name, m.flags)


def task_kind(task: Task) -> TaskKind:
    """What runs: a command line, a Python function (PythonTask), a call into a library, or a library."""
    if isinstance(task, FunctionCall):
        return "function_call"
    if isinstance(task, LibraryTask):
        return "library"
    if isinstance(task, PythonTask):
        return "python"
    return "command"


# Request boxes and option sets are shared between the specs that have the same ones (a run's tasks
# come in a few shapes); the tables stop growing at this many entries (then each spec has its own).
_SHARED_MAX = 4096
_boxes: dict[tuple[float, float, float, float], Resources] = {}
_options: dict[TaskOptions, TaskOptions] = {}


# A task's ``requested`` is one of a few shared read-only mappings (core/api/task.py): its box is
# found by the mapping's identity, without reading the four values (the entry keeps the mapping alive,
# so its id is not reused while the entry exists).
_boxes_by_request: dict[int, tuple[Mapping[str, float], Resources]] = {}


def _box(requested: Mapping[str, float]) -> Resources:
    known = _boxes_by_request.get(id(requested))
    if known is not None and known[0] is requested:
        return known[1]
    key = (requested.get("cores", -1.0), requested.get("memory", -1.0), requested.get("disk", -1.0), requested.get("gpus", -1.0))
    box = _boxes.get(key)
    if box is None:
        box = UNSET if key == (-1.0, -1.0, -1.0, -1.0) else Resources.from_dict(requested)
        if len(_boxes) < _SHARED_MAX:
            _boxes[key] = box
    if type(requested) is types.MappingProxyType and len(_boxes_by_request) < _SHARED_MAX:
        _boxes_by_request[id(requested)] = (requested, box)  # read-only: its values cannot change under the entry
    return box


# A plain Task's rare options as read from it when it set none of them (the class defaults).
_DEFAULT_OPTION_VALUES = (NO_OPTIONS.max_retries, NO_OPTIONS.max_forsaken, 0, 0, 0, 0, NO_OPTIONS.scheduler)


def _task_options(task: Task) -> TaskOptions:
    options = TaskOptions(
        max_retries=task.max_retries,
        max_forsaken=task.max_forsaken,
        time_start=task.time_start / 1e6 if task.time_start else 0.0,  # the API's microseconds, as seconds
        time_end=task.time_end / 1e6 if task.time_end else 0.0,
        time_min=float(task.time_min) if task.time_min else 0.0,
        time_max=float(task.time_max) if task.time_max else 0.0,
        scheduler=task.scheduler,
        exec_mode=str(getattr(task, "exec_mode", "fork")),
        function_slots=int(getattr(task, "function_slots", 0) or 0),
    )
    if options == NO_OPTIONS:
        return NO_OPTIONS
    shared = _options.get(options)
    if shared is None and len(_options) < _SHARED_MAX:
        shared = _options[options] = options
    return shared or options


def task_spec(task: Task) -> TaskSpec:
    """``task`` frozen as the scheduler sees it, under its current id."""
    if type(task) is Task:  # most tasks: its own fields, no properties or kind tests
        kind: TaskKind = "command"
        command, category, priority = task._command, task._category, task._priority
        if (task.max_retries, task.max_forsaken, task.time_start, task.time_end, task.time_min, task.time_max,
                task.scheduler) == _DEFAULT_OPTION_VALUES:
            options = NO_OPTIONS  # most tasks: no TaskOptions made, compared and looked up per submit
        else:
            options = _task_options(task)
    else:  # a subclass may define what these properties return
        kind, command, category, priority = task_kind(task), task.command, task.category, task.priority
        options = _task_options(task)
    inputs, outputs, environments, features = task.inputs, task.outputs, task.environments, task.features
    # In TaskSpec's field order, built as one tuple (the kind comes from task_kind: no check needed).
    return task_spec_unchecked((
        task._id,
        kind,
        command,
        tuple([_mount(m) for m in inputs]) if inputs else (),
        tuple([_mount(m) for m in outputs]) if outputs else (),
        tuple([file_spec(f) for f in environments]) if environments else (),
        _box(task.requested),
        tuple(features) if features else (),
        category,
        priority,
        task.library_required,
        task.library_provided,
        options,
    ))


__all__ = ["file_spec", "task_kind", "task_spec"]
