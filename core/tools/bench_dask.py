"""Dask workloads for ``vine_benchmark``: our scheduler next to dask's threaded one and distributed.

Workloads (``vine_benchmark dask-sum dask-chain dask-array [--vs PEERS]``):

  dask-sum    5,000 independent delayed tasks plus one ``sum`` over them
  dask-chain  a chain of 1,000 delayed tasks, each taking the previous one's value
  dask-array  ``(x + x.T).sum()`` over a 2000x2000 dask.array in 50x50 chunks (3,737 tasks once
              dask's optimisation has fused it)

Peers, each computing the same collection in this process with ``dask.compute(..., scheduler=...)``
on the same 2 cores:

  daskvine        ``daskvine.DaskVine.get`` in its default mode (function calls, lazy transfers),
                  2 local workers x 1 core
  daskvine-tasks  the same with ``task_mode="tasks"``
  core-calls      this module's minimal Dask scheduler straight on core (one FunctionCall per graph
                  node, non-target results left on the workers as temps), 2 workers x 1 core: the
                  path DaskVine's default mode stands on, measured without it
  threaded        ``dask.threaded.get`` with 2 threads
  distributed     ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``

Each row has seconds, tasks/s, ms/task and the ratios of its time to distributed's and threaded's in
the same run (``speedup_vs_distributed`` > 1 means faster). Every result is checked against the
known answer. Cluster start-up is not timed (each peer runs one small warm-up graph first).
"""

from __future__ import annotations

import argparse
import operator
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import core as vine
from core.errors import TaskError

WORKLOADS = ("dask-sum", "dask-chain", "dask-array")
PEERS = ("daskvine", "daskvine-tasks", "core-calls", "threaded", "distributed")
WORKERS, CORES_EACH = 2, 1
LIBRARY = "bench-dask-core-calls"
STALL_SECONDS = 120  # no call finishing for this long means the run is stuck


# --- the graphs -------------------------------------------------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def add_all(values: list[int]) -> int:
    return sum(values)


def build(name: str) -> tuple[Any, Any, Callable[[Any], bool]]:
    """``(collection, expected, check)`` for workload ``name``."""
    import dask

    if name == "dask-sum":
        n = 5000
        parts = [dask.delayed(inc)(i) for i in range(n)]
        expected = n * (n + 1) // 2
        return dask.delayed(add_all)(parts), expected, lambda v: v == expected
    if name == "dask-chain":
        n = 1000
        value = dask.delayed(inc)(0)
        for _ in range(n - 1):
            value = dask.delayed(inc)(value)
        return value, n, lambda v: v == n
    if name == "dask-array":
        import dask.array as da

        side, chunk = 2000, 50
        x = da.ones((side, side), chunks=(chunk, chunk))
        expected = 2.0 * side * side
        return (x + x.T).sum(), expected, lambda v: float(v) == expected
    raise ValueError(f"unknown dask workload {name!r}; choose from {', '.join(WORKLOADS)}")


def count_tasks(coll: Any) -> int:
    """Graph nodes a scheduler receives for ``coll`` after dask's own optimisation."""
    import dask.base

    return len(dask.base.collections_to_dsk([coll], optimize_graph=True))


# --- core-calls: a minimal Dask scheduler on core -----------------------------------------------------------


def run_node(node: Any, values: dict[Any, Any]) -> Any:
    """The library function: one graph node, its dependencies' values already loaded on the worker."""
    return node(values)


def _flatten(keys: Any) -> Iterator[Any]:
    stack = [keys]
    while stack:
        k = stack.pop()
        if isinstance(k, list):
            stack.extend(reversed(k))
        else:
            yield k


def _repack(keys: Any, values: dict[Any, Any]) -> Any:
    if isinstance(keys, list):
        return tuple(_repack(k, values) for k in keys)
    return values[keys]


class CoreCallsGet:
    """``get(dsk, keys)`` on a core Manager: one FunctionCall per graph node, all submitted at once.

    Non-target values stay on the workers as FunctionCall temp outputs; consumers name their
    producers' calls as arguments and wait in core's scheduler (not here) until those temps exist,
    so a chain link costs the workers' and the manager's latency, not this thread's. A temp is
    dropped from the workers once every consumer has finished.
    """

    def __init__(self, manager: vine.Manager, library: str = LIBRARY) -> None:
        self.m = manager
        self.library = library

    def __call__(self, dsk: Any, keys: Any, **_kwargs: Any) -> Any:  # noqa: C901 - one branch per benchmark peer
        from dask._task_spec import Alias, DataNode, convert_legacy_graph
        from dask.utils import ensure_dict

        if hasattr(dsk, "__dask_graph__"):
            dsk = dsk.__dask_graph__()
        graph = convert_legacy_graph(ensure_dict(dsk))
        targets = list(_flatten(keys))
        for k in targets:
            if k not in graph:
                raise KeyError(k)
        # Ancestors of the targets in dependency order (iterative: chains of any length).
        order: list[Any] = []
        seen: set[Any] = set()
        for root in targets:
            stack: list[tuple[Any, bool]] = [(root, False)]
            while stack:
                key, expanded = stack.pop()
                if expanded:
                    order.append(key)
                    continue
                if key in seen:
                    continue
                seen.add(key)
                stack.append((key, True))
                stack.extend((d, False) for d in graph[key].dependencies if d not in seen)
        wanted = set(targets)
        root: dict[Any, Any] = {}  # alias -> the key it finally names (aliases are resolved here, never run)
        for key in order:
            node = graph[key]
            if isinstance(node, Alias):
                root[key] = root.get(node.target, node.target)
        consumers: dict[Any, int] = {}
        for key in order:
            if key not in root:
                for d in graph[key].dependencies:
                    consumers[root.get(d, d)] = consumers.get(root.get(d, d), 0) + 1
        local: dict[Any, Any] = {}  # literal data, resolved here
        calls: dict[Any, vine.FunctionCall] = {}
        producer_of: dict[int, Any] = {}
        for key in order:
            node = graph[key]
            if key in root:
                continue
            if isinstance(node, DataNode):
                local[key] = node.value
                continue
            deps = [(d, root.get(d, d)) for d in node.dependencies]
            values = {d: calls[r] if r in calls else local[r] for d, r in deps}
            call = vine.FunctionCall(self.library, "run_node", node, values)
            if key not in wanted or consumers.get(key):
                call.enable_temp_output()
            self.m.submit(call)
            calls[key] = call
            producer_of[call.id] = key
        self.last_calls = calls  # for profiling: the calls of the latest graph
        left = {call.id for call in calls.values()}
        while left:
            t = self.m.wait(STALL_SECONDS)
            if t is None:
                raise TaskError(f"core-calls: no call finished in {STALL_SECONDS} s ({len(left)} left)")
            if t.id not in left:
                continue
            left.discard(t.id)
            if t.result != "success" or t.exit_code != 0:
                err = t.output
                self.m.cancel_all()
                while not self.m.empty():
                    self.m.wait(5)
                raise err if isinstance(err, BaseException) else TaskError(f"node {producer_of[t.id]!r} failed: {t.result}")
            for d in graph[producer_of[t.id]].dependencies:
                r = root.get(d, d)
                if r in calls and consumers.get(r):
                    consumers[r] -= 1
                    if consumers[r] == 0 and r not in wanted:
                        self.m.undeclare_file(calls[r].output_file)  # its consumers are done: free the workers
        values_out = {k: (calls[root.get(k, k)].output if root.get(k, k) in calls else local[root.get(k, k)]) for k in targets}
        for k, v in values_out.items():
            if isinstance(v, BaseException):
                raise v
        return _repack(keys, values_out)


def install_core_calls(m: vine.Manager) -> CoreCallsGet:
    lib = m.create_library_from_functions(LIBRARY, run_node, exec_mode="direct")
    lib.set_cores(CORES_EACH)
    m.install_library(lib)
    return CoreCallsGet(m)


# --- peers ---------------------------------------------------------------------------------------------------


@contextmanager
def _core_calls() -> Iterator[Callable[..., Any]]:
    from core.tools.bench_cluster import local_cluster

    with local_cluster(WORKERS, cores=CORES_EACH) as m:
        yield install_core_calls(m)


@contextmanager
def _daskvine(mode: str | None) -> Iterator[Callable[..., Any]]:
    from core.tools.bench_cluster import local_cluster
    from daskvine import DaskVine  # type: ignore[attr-defined]

    kw: dict[str, Any] = {"progress_disable": True}
    if mode is not None:
        kw["task_mode"] = mode
    with local_cluster(WORKERS, cores=CORES_EACH, manager_class=DaskVine) as m:
        yield lambda dsk, keys, **more: m.get(dsk, keys, **kw, **more)


@contextmanager
def _threaded() -> Iterator[Callable[..., Any]]:
    import dask.threaded

    yield lambda dsk, keys, **kw: dask.threaded.get(dsk, keys, num_workers=WORKERS * CORES_EACH, **kw)


@contextmanager
def _distributed() -> Iterator[Callable[..., Any]]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=WORKERS, threads_per_worker=CORES_EACH, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client.get


PEER_SETUPS: dict[str, Callable[[], Any]] = {
    "daskvine": lambda: _daskvine(None),
    "daskvine-tasks": lambda: _daskvine("tasks"),
    "core-calls": _core_calls,
    "threaded": _threaded,
    "distributed": _distributed,
}


def daskvine_available() -> bool:
    try:
        import daskvine
    except ImportError:
        return False
    return hasattr(daskvine, "DaskVine")


def _peers(vs: str) -> list[str]:
    chosen = [p.strip() for p in vs.split(",") if p.strip()] if vs else list(PEERS)
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise ValueError(f"unknown --vs peer(s) {unknown}; choose from {', '.join(PEERS)}")
    if not vs and not daskvine_available():
        chosen = [p for p in chosen if not p.startswith("daskvine")]
    return chosen


def measure(get: Callable[..., Any], name: str, repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` computations of workload ``name`` with ``get`` (after a warm-up)."""
    import dask

    small = dask.delayed(operator.add)(dask.delayed(inc)(1), 2)  # warm-up: libraries, connections, imports
    (v,) = dask.compute(small, scheduler=get)
    if v != 4:
        raise AssertionError(f"warm-up graph gave {v!r}, not 4")
    best = float("inf")
    value: Any = None
    for _ in range(max(1, repeat)):
        coll, _expected, check = build(name)
        start = time.perf_counter()
        (value,) = dask.compute(coll, scheduler=get)
        best = min(best, time.perf_counter() - start)
        if not check(value):
            raise AssertionError(f"{name}: wrong result {value!r}")
    return best, value


def run(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for workload ``name``: one per peer, then the ratios of each to distributed and threaded."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown dask workload {name!r}; choose from {', '.join(WORKLOADS)}")
    peers = _peers(getattr(args, "vs", "") or "")
    repeat = int(getattr(args, "repeat", 1) or 1)
    coll, _expected, _check = build(name)
    ntasks = count_tasks(coll)
    rows: list[dict[str, Any]] = []
    for peer in peers:
        with PEER_SETUPS[peer]() as get:
            seconds, _value = measure(get, name, repeat)
        rows.append({"workload": name, "peer": peer, "tasks": ntasks, "seconds": round(seconds, 3),
                     "tasks_per_s": round(ntasks / seconds, 1), "ms_per_task": round(seconds / ntasks * 1e3, 3),
                     "workers": f"{WORKERS}x{CORES_EACH} core" if peer != "threaded" else f"{WORKERS} threads", "correct": True})
    base = {r["peer"]: r["seconds"] for r in rows}
    for r in rows:
        for ref in ("distributed", "threaded"):
            if ref in base and r["peer"] != ref:
                r[f"speedup_vs_{ref}"] = round(base[ref] / r["seconds"], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(prog="python -m core.tools.bench_dask", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", default=list(WORKLOADS))
    p.add_argument("--vs", default="")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    for w in args.workloads:
        for row in run(w, args):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    raise SystemExit(main())
