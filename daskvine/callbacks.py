"""dask's callback protocol (``dask.callbacks.Callback``) for DaskVine runs.

``get`` honours every active callback (``with Callback():``, ``Callback.register()``, and the
``callbacks=`` keyword) exactly as dask's local schedulers call them:

- ``start(dsk)`` then ``start_state(dsk, state)`` before anything is submitted;
- ``pretask(key, dsk, state)`` when a key's task is dispatched (submitted to the manager), and for
  keys resolved in the manager (aliases, pure containers) just before they are resolved;
- ``posttask(key, result, dsk, state, worker_id)`` when it finished. ``result`` is the value when it
  is in the manager (requested keys, ``checkpoint_fn`` keys, inputs of containers resolved here,
  everything with ``lazy_transfers=False``), else :data:`ON_WORKER`; ``worker_id`` is the worker's
  ``host:port`` (``"manager"`` for keys resolved in the manager);
- ``finish(dsk, state, errored)`` at the end, also after an exception or an interrupt.

Literals (``DataNode``) are not tasks: like dask, they sit in ``state["cache"]`` from the start and
get no pre/posttask. ``dsk`` is the culled graph of task specs. ``state`` has dask's fields
(``dependencies dependents waiting waiting_data cache ready running finished released``), kept up
to date, so ``ProgressBar``, ``tqdm.dask.TqdmCallback`` and ``Profiler`` work unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dask.callbacks import local_callbacks, unpack_callbacks


class _OnWorker:
    """The ``result`` posttask gets for a value that stayed on a worker as a temp file."""

    _instance: _OnWorker | None = None

    def __new__(cls) -> _OnWorker:  # noqa: PYI034 - a singleton
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "<daskvine: value kept on a worker>"

    def __reduce__(self) -> str:
        return "ON_WORKER"


ON_WORKER = _OnWorker()


class CallbackSet:
    """The active callbacks of one ``get``, called in dask's order."""

    def __init__(self, callbacks: list[tuple[Any, ...]]) -> None:
        self.all = list(callbacks)
        _, _, self.pretask_fns, self.posttask_fns, _ = unpack_callbacks(self.all)
        self.started: list[tuple[Any, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.all)

    def start(self, dsk: dict[Any, Any]) -> None:
        for cb in self.all:
            if cb[0]:
                cb[0](dsk)
            self.started.append(cb)

    def start_state(self, dsk: dict[Any, Any], state: dict[str, Any]) -> None:
        for cb in self.all:
            if cb[1]:
                cb[1](dsk, state)

    def pretask(self, key: Any, dsk: dict[Any, Any], state: dict[str, Any]) -> None:
        for f in self.pretask_fns:
            f(key, dsk, state)

    def posttask(self, key: Any, value: Any, dsk: dict[Any, Any], state: dict[str, Any], worker: Any) -> None:
        for f in self.posttask_fns:
            f(key, value, dsk, state, worker)

    def finish(self, dsk: dict[Any, Any], state: dict[str, Any], errored: bool) -> None:
        for cb in self.started:
            if cb[4]:
                cb[4](dsk, state, errored)


@contextmanager
def active_callbacks(explicit: Any = None) -> Iterator[CallbackSet]:
    """The callbacks for one ``get``, chosen as dask's local schedulers choose them.

    With ``callbacks=`` (one Callback or 5-tuple, or a list of them) only those run. Without it the
    globally active ones run, taken by the outermost scheduler only (a graph computed inside a task
    does not report to them).
    """
    from dask.callbacks import normalize_callback

    if explicit is None or (isinstance(explicit, (list, tuple, set)) and not explicit):
        chosen = None
    elif _is_callback_tuple(explicit) or not isinstance(explicit, (list, tuple, set)):
        chosen = [normalize_callback(explicit)]
    else:
        chosen = [normalize_callback(c) for c in explicit]
    with local_callbacks(chosen) as active:
        yield CallbackSet(list(active))


def _is_callback_tuple(obj: Any) -> bool:
    return isinstance(obj, tuple) and len(obj) == 5 and all(f is None or callable(f) for f in obj)


def initial_state(dependencies: dict[Any, frozenset[Any]], dependents: dict[Any, list[Any]], data: dict[Any, Any]) -> dict[str, Any]:
    """dask's scheduler state for a run: ``data`` (literals) in the cache, the rest waiting or ready."""
    waiting: dict[Any, set[Any]] = {}
    ready: list[Any] = []
    for k, deps in dependencies.items():
        if k in data:
            continue
        pending = {d for d in deps if d not in data}
        if pending:
            waiting[k] = pending
        else:
            ready.append(k)
    return {
        "dependencies": {k: set(v) for k, v in dependencies.items()},
        "dependents": {k: set(v) for k, v in dependents.items()},
        "waiting": waiting,
        "waiting_data": {k: set(v) for k, v in dependents.items() if v},
        "cache": dict(data),
        "ready": ready,
        "running": set(),
        "finished": set(),
        "released": set(),
    }
