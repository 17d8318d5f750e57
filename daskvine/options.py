"""The keywords of ``DaskVine.get``: defaults, validation, and what each one means.

Unknown keywords are ignored, as dask's own schedulers ignore them (dask passes every keyword of
``compute`` through). Known keywords with a bad value raise ValueError or TypeError naming the
keyword, so a typo in a value never turns into a silent default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

TASK_MODES = ("function-calls", "tasks")
PRIORITY_MODES = ("largest-input-first", "random", "depth-first", "breadth-first",
                  "longest-category-first", "shortest-category-first", "FIFO", "LIFO")
RESOURCES_MODES = ("fixed", "max")
RESOURCE_NAMES = ("cores", "memory", "disk", "gpus")
LIB_RESOURCE_NAMES = RESOURCE_NAMES + ("slots",)
SCHEDULING_MODES = ("files", "time", "rand", "worst", "disk", "fcfs")


@dataclass
class GetOptions:
    """Everything one ``get`` call was asked to do (REFERENCE §6.1); see the README's keyword table."""

    lazy_transfers: bool = True
    environment: Any = None
    extra_files: dict[Any, str] = field(default_factory=dict)
    env_vars: dict[str, Any] = field(default_factory=dict)
    checkpoint_fn: Callable[[Any, Any], bool] | None = None
    resources: dict[str, float] = field(default_factory=dict)
    resources_mode: str = "fixed"
    submit_per_cycle: int | None = None
    max_pending: int | None = None
    retries: int = 5
    verbose: bool = False
    progress_disable: bool | None = None  # None: shown only when stdout is a terminal or a notebook
    progress_label: str = "[green]tasks"
    task_mode: str = "function-calls"
    lib_extra_functions: list[Callable[..., Any]] = field(default_factory=list)
    lib_resources: dict[str, float] | None = None
    lib_command: str | None = None
    lib_modules: list[Any] = field(default_factory=list)
    task_priority_mode: str = "largest-input-first"
    scheduling_mode: str = "files"
    prune_depth: int = 0
    wrapper: Callable[..., Any] | None = None
    wrapper_proc: Callable[[Any], Any] = print
    callbacks: Any = None
    vine_submit: Callable[[Any, Any], Any] | None = None
    vine_done: Callable[[Any, Any], Any] | None = None


def _resources(name: str, value: Any, allowed: tuple[str, ...]) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a dict such as {{'cores': 1}}, got {type(value).__name__}")
    out: dict[str, float] = {}
    for k, v in value.items():
        if k not in allowed:
            raise ValueError(f"{name} has an unknown resource {k!r}; use {', '.join(allowed)}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name}[{k!r}] must be a number, got {v!r}") from None
    return out


def _optional_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer (or None), got {value!r}") from None
    return n if n >= 1 else None  # TaskVine: values below 1 mean no limit


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")
    return str(value)


def parse_options(kwargs: Mapping[str, Any]) -> GetOptions:  # noqa: C901 - one branch per get() keyword
    """A :class:`GetOptions` from ``get``'s keywords; unknown names are ignored."""
    o = GetOptions()
    kw = dict(kwargs)
    o.lazy_transfers = bool(kw.get("lazy_transfers", True)) and bool(kw.get("worker_transfers", True))
    o.environment = kw.get("environment")
    if o.environment is not None and not hasattr(o.environment, "cache_name") and (
            not isinstance(o.environment, (str, os.PathLike)) or not os.path.exists(o.environment)):
        raise ValueError(f"environment must be a File or the path of an environment tarball or directory; got {o.environment!r}")
    extra = kw.get("extra_files") or {}
    if not isinstance(extra, Mapping) or not all(hasattr(f, "cache_name") and isinstance(n, str) for f, n in extra.items()):
        raise TypeError("extra_files must be a dict {File: 'remote name'} of files declared on this manager")
    o.extra_files = dict(extra)
    env_vars = kw.get("env_vars") or {}
    if not isinstance(env_vars, Mapping):
        raise TypeError(f"env_vars must be a dict {{NAME: value or fn(manager, task)}}, got {type(env_vars).__name__}")
    o.env_vars = dict(env_vars)
    o.checkpoint_fn = kw.get("checkpoint_fn")
    if o.checkpoint_fn is not None and not callable(o.checkpoint_fn):
        raise TypeError("checkpoint_fn must be a function (dsk, key) -> bool")
    o.resources = _resources("resources", kw.get("resources"), RESOURCE_NAMES)
    o.resources_mode = _choice("resources_mode", kw.get("resources_mode") or "fixed", RESOURCES_MODES)
    o.submit_per_cycle = _optional_count("submit_per_cycle", kw.get("submit_per_cycle"))
    o.max_pending = _optional_count("max_pending", kw.get("max_pending"))
    retries = kw.get("retries", 5)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
        raise ValueError(f"retries must be an integer >= 1 (attempts per key), got {retries!r}")
    o.retries = retries
    o.verbose = bool(kw.get("verbose", False))
    pd = kw.get("progress_disable")
    o.progress_disable = None if pd is None else bool(pd)
    o.progress_label = str(kw.get("progress_label") or "[green]tasks")
    if kw.get("task_mode") is None and o.resources_mode == "max":
        # Sizing from measurements needs tasks: a function call takes no resources of its own.
        o.task_mode = "tasks"
    else:
        o.task_mode = _choice("task_mode", kw.get("task_mode") or "function-calls", TASK_MODES)
    if o.task_mode == "function-calls" and o.resources_mode == "max":
        raise ValueError("resources_mode='max' sizes each task from the resources measured in its category, which needs "
                         "task_mode='tasks' (function calls take no resources of their own; size the library with lib_resources)")
    extra_fns = kw.get("lib_extra_functions") or []
    if not all(callable(f) and hasattr(f, "__name__") for f in extra_fns):
        raise TypeError("lib_extra_functions must be a list of named functions")
    o.lib_extra_functions = list(extra_fns)
    lib_res = kw.get("lib_resources")
    o.lib_resources = _resources("lib_resources", lib_res, LIB_RESOURCE_NAMES) if lib_res is not None else None
    o.lib_command = kw.get("lib_command")
    if o.lib_command is not None and not isinstance(o.lib_command, str):
        raise TypeError("lib_command must be a string (a command prefix for the library, e.g. 'source setup.sh &&')")
    modules = kw.get("lib_modules") or kw.get("hoisting_modules") or kw.get("import_modules") or []
    o.lib_modules = list(modules)
    o.task_priority_mode = _choice("task_priority_mode", kw.get("task_priority_mode") or "largest-input-first", PRIORITY_MODES)
    o.scheduling_mode = _choice("scheduling_mode", kw.get("scheduling_mode") or "files", SCHEDULING_MODES)
    prune = kw.get("prune_depth", 0)
    if not isinstance(prune, int) or isinstance(prune, bool) or prune < 0:
        raise ValueError(f"prune_depth must be an integer >= 0, got {prune!r}")
    o.prune_depth = prune
    o.wrapper = kw.get("wrapper")
    if o.wrapper is not None and not callable(o.wrapper):
        raise TypeError("wrapper must be a function (key, compute) -> (info, value)")
    o.wrapper_proc = kw.get("wrapper_proc") or print
    o.callbacks = kw.get("callbacks")
    for name in ("vine_submit", "vine_done"):
        hook = kw.get(name)
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be a function (key, task)")
        setattr(o, name, hook)
    if kw.get("env_per_task"):
        raise ValueError("env_per_task=True is not supported: the environment is unpacked once per worker and shared "
                         "by every task (give each task its own copy by declaring separate environments)")
    if kw.get("reconstruct"):
        raise ValueError("reconstruct=True (merging graph nodes into fan-in trees) is not supported; "
                         "let dask's optimisers fuse the graph instead")
    return o
