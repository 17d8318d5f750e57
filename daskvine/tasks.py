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
from core.library import FunctionCall

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
        t.set_priority(priority)
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


def dependency_arg(values: dict[Any, Any], refs: dict[Any, Any], key: Any) -> Any:
    """What a consumer gets for input ``key``: its value (inline) or its producing task (a temp input)."""
    if key in values:
        return Inline(values[key])
    return refs[key]
