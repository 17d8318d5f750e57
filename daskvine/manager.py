"""``DaskVine``: a :class:`core.Manager` whose ``get`` is a dask scheduler.

::

    coll.compute(scheduler=m.get, **kw)      or  dask.config.set(scheduler=m.get) / dask.compute(...)
        │  dask calls m.get(dsk, keys, **kw)
        ▼
    parse keywords ─► normalise + cull the graph ─► library for this configuration (installed once)
        ─► GraphRun: submit / wait / retry, callbacks, progress ─► results shaped like dask's

Don't add a ``persist`` method: ``dask.persist(..., scheduler=m.get)`` would call it instead of
``get`` (REFERENCE §6.2 point 6).
"""

from __future__ import annotations

import collections
import itertools
import os
from typing import Any

from core.manager.facade import Manager

from .callbacks import active_callbacks
from .execution import GraphRun
from .graph import nest_results, plan_graph, to_task_graph
from .options import GetOptions, parse_options
from .runner import daskvine_run_node
from .tasks import NodeTaskFactory

DEFAULT_LIB_RESOURCES = {"cores": 1.0}
MAX_LIBRARIES = 4  # distinct library configurations kept installed; the least recently used goes first
PER_GET_TUNING = ("category-steady-n-tasks", "prefer-dispatch", "immediate-recovery")


class DaskVine(Manager):
    """A Manager that computes dask graphs: ``result = coll.compute(scheduler=m.get)``.

    Every keyword of :meth:`get` (see the README's table) can be given to ``compute``; dask passes
    them on. The manager stays usable between ``get`` calls and for ordinary tasks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dask_libraries: collections.OrderedDict[tuple[Any, ...], str] = collections.OrderedDict()
        self._dask_library_ids = itertools.count(1)
        self._dask_runs = itertools.count(1)
        self._dask_envs: dict[str, Any] = {}
        self.set_property("framework", "dask")

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self.get(dsk, keys, **kwargs)

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Compute ``keys`` of graph ``dsk`` on the workers; results shaped as dask's schedulers shape them.

        ``dsk``: an expression object, a HighLevelGraph or a dict (task specs or old-style tuples);
        never changed. ``keys``: a key, or a (nested) list of keys (a list gives a tuple). A key not
        in the graph raises KeyError. Keywords: see the README's table; unknown ones are ignored.
        """
        opts = parse_options(kwargs)
        graph = to_task_graph(dsk)
        keep: list[Any] = []
        if opts.checkpoint_fn is not None:
            keep = [k for k in graph if opts.checkpoint_fn(graph, k)]
        plan = plan_graph(graph, keys, keep)
        if not opts.lazy_transfers or opts.wrapper is not None:
            # A wrapper's info comes back beside each value, so every value does (README: wrapper).
            plan.needs_value.update(plan.order)
        tag = f"dask-{next(self._dask_runs)}-{os.getpid()}"
        self._configure_for(opts)
        library = self._dask_library(opts) if opts.task_mode == "function-calls" and plan.remote_keys else None
        factory = NodeTaskFactory(self, opts, tag, library)
        previous_monitoring = self._monitoring
        if opts.resources_mode == "max":
            self.enable_monitoring(watchdog=False)
        try:
            with active_callbacks(opts.callbacks) as cbs:
                values = GraphRun(self, plan, opts, factory, cbs, tag).run()
        finally:
            self._monitoring = previous_monitoring
            self.update_catalog()
        return nest_results(keys, values)

    # -- configuration --------------------------------------------------------------------------------
    def _configure_for(self, opts: GetOptions) -> None:
        for name in PER_GET_TUNING:
            self.tune(name, 1)
        self.set_scheduler(opts.scheduling_mode)

    def _dask_environment_file(self, env: Any) -> Any:
        if hasattr(env, "cache_name"):
            return env
        path = os.path.abspath(os.fspath(env))
        f = self._dask_envs.get(path)
        if f is None:
            f = self._dask_envs[path] = self._environment_file(path)
        return f

    def _dask_library(self, opts: GetOptions) -> str:
        """The library serving this configuration's calls, created and installed on first use."""
        resources = opts.lib_resources if opts.lib_resources is not None else (opts.resources or DEFAULT_LIB_RESOURCES)
        env = self._dask_environment_file(opts.environment) if opts.environment is not None else None
        config = (
            tuple(sorted(resources.items())),
            tuple(m if isinstance(m, str) else getattr(m, "__name__", repr(m)) for m in opts.lib_modules),
            tuple(_identity(f) for f in opts.lib_extra_functions),
            opts.lib_command,
            env.cache_name if env is not None else None,
            tuple(sorted(((k, v if isinstance(v, str) else _identity(v)) for k, v in opts.env_vars.items()), key=repr)),
            opts.resources_mode,
        )
        name = self._dask_libraries.get(config)
        if name is not None and self.check_library_exists(name):
            self._dask_libraries.move_to_end(config)
            return name
        # A configuration with inline lambdas (env_vars, lib_extra_functions) is new on every
        # compute: keep a few libraries, not one per call, so idle instances do not pile up.
        while len(self._dask_libraries) >= MAX_LIBRARIES:
            _, old = self._dask_libraries.popitem(last=False)
            self.remove_library(old)
        name = f"Dask-Library-{next(self._dask_library_ids)}"
        lib = self.create_library_from_functions(
            name, daskvine_run_node, *opts.lib_extra_functions,
            hoisting_modules=list(opts.lib_modules), exec_mode="direct", add_env=False,
            poncho_env=env, init_command=opts.lib_command, library_resources=dict(resources),
        )
        for var, value in opts.env_vars.items():
            lib.set_env_var(var, value(self, lib) if callable(value) else str(value))
        self.install_library(lib)
        self._dask_libraries[config] = name
        return name


def _identity(obj: Any) -> Any:
    """A configuration entry for a function: the object itself, so the entry keeps it alive (an
    ``id`` alone can be reused by a later lambda once the first is gone)."""
    try:
        hash(obj)
        return obj
    except TypeError:
        return object()  # cannot be compared: a configuration of its own (the library count is bounded)
