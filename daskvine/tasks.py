"""Making the vine task for one graph node, in either task mode.

::

    key, node, {dep: value or producing task}
        │ task_mode="function-calls" (default)          task_mode="tasks"
        ├─► FunctionCall(library, "daskvine_run_node",  ├─► PythonTask(daskvine_run_node,
        │        node, dep keys, dep args)              │        node, dep keys, dep args)
        │   (a warm direct-mode library per worker)     │   (a fork of the worker's fork server)
        └─ non-target result: enable_temp_output()      └─ same

A dependency whose value is in the manager travels inside the arguments (wrapped in
:class:`~daskvine.runner.Inline`); one whose value stays on a worker is passed as its producing
task, which core turns into a temp-file input loaded on the worker. The node is pickled once, at
submit, with its arguments.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import core as vine
from core.api.library import FunctionCall

from .options import GetOptions
from .runner import Inline, daskvine_run_node

if TYPE_CHECKING:
    from .manager import DaskVine

RUN_NODE = daskvine_run_node.__name__
WARM_IMPORTS = ("dask._task_spec", "daskvine.runner")


def _is_installed_module(name: str) -> bool:
    """True for a module of an installed distribution (site-packages), never the user's own script."""
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None) or ""
    return name != "__main__" and ("site-packages" in path or "dist-packages" in path)


def calls_have_temp_outputs() -> bool:
    """Whether this core's FunctionCall can keep its result on the worker (``enable_temp_output``)."""
    return callable(getattr(FunctionCall, "enable_temp_output", None))


def category_of(key: Any) -> str:
    from dask.utils import key_split

    return str(key_split(key)).replace(" ", "_") or "dask"


class NodeTaskFactory:
    """Builds the vine task for each key of one ``get``."""

    def __init__(self, manager: DaskVine, opts: GetOptions, tag: str, library: str | None) -> None:
        self.m = manager
        self.opts = opts
        self.tag = tag
        self.library = library
        self.environment = manager._dask_environment_file(opts.environment) if opts.environment is not None else None
        self.category_peak: dict[str, dict[str, float]] = {}  # resources_mode="max": peaks seen per category
        self._module_ok: dict[str, bool] = {}

    @property
    def temps_possible(self) -> bool:
        return self.opts.task_mode == "tasks" or calls_have_temp_outputs()

    def build(self, key: Any, node: Any, dep_keys: tuple[Any, ...], dep_args: list[Any], keep_on_worker: bool,
              priority: float) -> Any:
        o = self.opts
        args: tuple[Any, ...] = (node, dep_keys, dep_args) if o.wrapper is None else (node, dep_keys, dep_args, o.wrapper)
        if o.task_mode == "tasks":
            t: Any = vine.PythonTask(daskvine_run_node, *args)
            t.set_warm_imports(self._warm_imports(node))
            if self.environment is not None:
                t.add_environment(self.environment)
            category = category_of(key)
            t.set_category(category)
            for name, value in self._resources_for(category).items():
                getattr(t, f"set_{name}")(value)
        else:
            t = vine.FunctionCall(self.library, RUN_NODE, *args)
            t.set_category(category_of(key))
        if keep_on_worker:
            t.enable_temp_output()
        t.set_tag(self.tag)
        t.set_priority(max(-PRIORITY_LIMIT, min(PRIORITY_LIMIT, priority)))  # retries come as +inf
        for f, remote in o.extra_files.items():
            t.add_input(f, remote)
        if o.task_mode == "tasks":
            for name, value in o.env_vars.items():
                t.set_env_var(name, value(self.m, t) if callable(value) else str(value))
        return t

    def _warm_imports(self, node: Any) -> list[str]:
        """Modules the worker's fork server should hold imported: dask's task specs, our runner, and
        the installed library that defines the node's function (numpy, pandas, awkward...), so each
        forked task does not import them again."""
        module = getattr(getattr(node, "func", None), "__module__", None)
        if module and module not in self._module_ok:
            self._module_ok[module] = _is_installed_module(module)
        extra = [module] if module and self._module_ok.get(module) else []
        return [*WARM_IMPORTS, *extra]

    def _resources_for(self, category: str) -> dict[str, float]:
        """``resources`` as given; with ``resources_mode="max"`` memory and disk follow the largest
        use measured so far in the category, never above what ``resources`` allows."""
        res = dict(self.opts.resources)
        peak = self.category_peak.get(category)
        if self.opts.resources_mode == "max" and peak:
            for name in ("memory", "disk"):
                seen = peak.get(name, 0)
                if seen > 0:
                    cap = res.get(name)
                    res[name] = float(math.ceil(seen)) if cap is None else min(cap, float(math.ceil(seen)))
        return res

    def observe(self, task: Any) -> None:
        """Remember what a finished task measured (``resources_mode="max"``)."""
        if self.opts.resources_mode != "max" or self.opts.task_mode != "tasks":
            return
        measured = task.resources_measured
        peak = self.category_peak.setdefault(task.category, {})
        for name in ("memory", "disk"):
            value = getattr(measured, name, -1)
            if value is not None and value > peak.get(name, 0):
                peak[name] = float(value)


PRIORITY_LIMIT = 1e15
SHARE_THRESHOLD = 64 << 10  # bytes: a larger value several tasks need goes to each worker once, as a file


class ManagerValue:
    """A value held by the manager, sent to workers once as a cached buffer and loaded there.

    Passed in a task's arguments like a producing task: core's reference scan makes the buffer an
    input and the worker puts the value in its place. Used when several remote consumers need the
    same large value (a ``from_array`` source, a checkpointed result), so it is not pickled into
    every consumer's arguments.
    """

    __slots__ = ("file",)

    def __init__(self, file: Any) -> None:
        self.file = file

    def _vine_reference(self) -> tuple[Any, bool]:
        return self.file, True


class DependencyArgs:
    """What a consumer gets for each input: its producing task (a temp), a shared buffer, or the value inline."""

    def __init__(self, manager: DaskVine, values: dict[Any, Any], refs: dict[Any, Any], remote_consumers: dict[Any, int],
                 source_of: Any) -> None:
        self.m = manager
        self.source_of = source_of
        self.values = values
        self.refs = refs
        self.remote_consumers = remote_consumers
        self.shared: dict[Any, Any] = {}  # key -> ManagerValue or Inline, decided once per key
        self.buffers: list[Any] = []

    def __call__(self, key: Any) -> Any:
        if key not in self.values:
            return self.refs[key]
        src = self.source_of(key)  # aliases share their target's buffer
        arg = self.shared.get(src)
        if arg is not None:
            return arg
        value = self.values[src]
        if self.remote_consumers.get(src, 0) < 2:
            return Inline(value)
        from core.wire.remote import encode_result

        data = encode_result(True, value)  # pickled once, whatever the number of consumers
        if len(data) > SHARE_THRESHOLD:
            f = self.m.declare_buffer(data, cache="workflow")
            self.buffers.append(f)
            arg = ManagerValue(f)
        else:
            arg = Inline(value)
        self.shared[src] = arg
        return arg

    def release(self) -> None:
        for f in self.buffers:
            self.m.undeclare_file(f)
        self.buffers.clear()
