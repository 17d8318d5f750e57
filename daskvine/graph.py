"""Turning whatever dask hands to ``get`` into a plan: which keys run where, in what order.

::

    expression object ──__dask_graph__()──┐
    HighLevelGraph ──────ensure_dict──────┼──► {key: GraphNode} ──cull to the requested keys──► GraphPlan
    dict of old tuples / task specs ──────┘    (convert_legacy_graph)     kinds, order, dependents

Every key that must be computed gets one *kind*:

- ``data``: a literal (``DataNode``); its value is known in the manager, no task runs.
- ``alias``: another key's value under a second name (``Alias``, a bare key); resolved in the manager.
- ``local``: a pure container (a list, tuple or dict of other keys and literals, no function call)
  that is a target or whose inputs are all known in the manager; evaluated in the manager.
- ``remote``: everything else; one vine task per key.

All walks are iterative (a 10,000-long chain, a 100,000-node graph), and the input graph is never
changed: conversion builds new dicts and nodes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef, convert_legacy_graph

try:  # the list/tuple/dict constructors that task specs use for literal containers
    from dask._task_spec import _identity_cast as _IDENTITY_CAST
except ImportError:  # pragma: no cover - every dask with task specs has it today
    _IDENTITY_CAST = None
try:
    from dask._task_spec import NestedContainer as _NESTED_CONTAINER
except ImportError:  # pragma: no cover
    _NESTED_CONTAINER = ()

Key = Hashable


def to_task_graph(dsk: Any) -> dict[Key, GraphNode]:
    """A new ``{key: GraphNode}`` dict from an expression, a HighLevelGraph or a (legacy) dict.

    ``dsk`` itself is left as it was.
    """
    if not isinstance(dsk, Mapping):
        graph_of = getattr(dsk, "__dask_graph__", None)
        if graph_of is None:
            raise TypeError(f"get() needs a dask graph (a dict, a HighLevelGraph or a dask collection), got {type(dsk).__name__}")
        dsk = graph_of()  # dask 2025.4+: runs the expression optimisers; their errors surface here
    from dask.utils import ensure_dict

    plain = ensure_dict(dsk) if type(dsk) is not dict else dsk
    graph = dict(convert_legacy_graph(plain, all_keys=set(plain)))
    for k, node in graph.items():
        if isinstance(node, TaskRef):  # a bare reference as a whole node is an alias by another name
            graph[k] = Alias(k, node.key)
    return graph


def flatten_keys(keys: Any) -> list[Key]:
    """The requested keys in order, nested lists flattened (dask's own ``flatten`` semantics)."""
    out: list[Key] = []
    stack: list[Any] = [iter([keys])]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(item, list):
            stack.append(iter(item))
        else:
            out.append(item)
    return out


def nest_results(keys: Any, values: Mapping[Key, Any]) -> Any:
    """Shape results as dask's schedulers do: a list of keys gives a tuple, a bare key its value."""
    if not isinstance(keys, list):
        return values[keys]
    return tuple(nest_results(k, values) for k in keys)


def is_pure_container(node: GraphNode) -> bool:
    """True for a list/tuple/dict of references and literals with no function call inside."""
    if isinstance(node, (Alias, DataNode)) or not isinstance(node, Task):
        return False
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Task):
            if not (item.func is _IDENTITY_CAST or (_NESTED_CONTAINER and isinstance(item, _NESTED_CONTAINER))):
                return False
            stack.extend(item.args)
            stack.extend(v for k, v in item.kwargs.items() if k not in ("typ", "constructor"))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return True


def node_dependencies(node: GraphNode) -> frozenset[Key]:
    if isinstance(node, Alias):
        return frozenset((node.target,))
    return frozenset(node.dependencies)


@dataclass
class GraphPlan:
    """What ``get`` will do with a graph: computed keys in dependency order and how each is made."""

    graph: dict[Key, GraphNode]
    targets: list[Key]  # the requested keys, flattened, in order (duplicates removed)
    order: list[Key]  # every key to compute, each after its dependencies
    kinds: dict[Key, str]  # key -> "data" | "alias" | "local" | "remote"
    dependencies: dict[Key, frozenset[Key]]
    dependents: dict[Key, list[Key]]
    depth: dict[Key, int]  # longest path from a key without dependencies
    needs_value: set[Key] = field(default_factory=set)  # values the manager must hold (targets, local inputs)

    @property
    def remote_keys(self) -> list[Key]:
        return [k for k in self.order if self.kinds[k] == "remote"]

    def source_of(self, key: Key) -> Key:
        """The key whose value ``key`` really is: aliases followed to their end."""
        seen = 0
        while self.kinds[key] == "alias":
            key = self.graph[key].target  # type: ignore[attr-defined]
            seen += 1
            if seen > len(self.graph):
                raise ValueError(f"the graph has a cycle of aliases through {key!r}")
        return key


def plan_graph(graph: dict[Key, GraphNode], keys: Any, keep: Iterable[Key] = ()) -> GraphPlan:  # noqa: C901 - one pass over the graph that classifies every node
    """Cull ``graph`` to the ancestors of ``keys`` and decide each key's kind.

    ``keep``: further keys whose values must come back to the manager (``checkpoint_fn``).
    Raises KeyError for a requested key not in the graph, ValueError for a missing dependency or
    a cycle.
    """
    targets = list(dict.fromkeys(flatten_keys(keys)))
    for k in targets:
        try:
            present = k in graph
        except TypeError:  # an unhashable "key"
            raise KeyError(k) from None
        if not present:
            raise KeyError(k)

    # Cull: the ancestors of the targets, iteratively.
    deps: dict[Key, frozenset[Key]] = {}
    stack = list(targets)
    while stack:
        k = stack.pop()
        if k in deps:
            continue
        d = node_dependencies(graph[k])
        deps[k] = d
        for dep in d:
            if dep not in deps:
                if dep not in graph:
                    raise ValueError(f"Missing dependency {dep!r} for dependents {{{k!r}}}")
                stack.append(dep)

    # Topological order (Kahn), dependents, depth.
    dependents: dict[Key, list[Key]] = {k: [] for k in deps}
    missing = {k: len(d) for k, d in deps.items()}
    for k, d in deps.items():
        for dep in d:
            dependents[dep].append(k)
    ready = [k for k, n in missing.items() if n == 0]
    order: list[Key] = []
    depth: dict[Key, int] = {}
    while ready:
        k = ready.pop()
        order.append(k)
        depth[k] = 1 + max((depth[d] for d in deps[k]), default=-1)
        for c in dependents[k]:
            missing[c] -= 1
            if missing[c] == 0:
                ready.append(c)
    if len(order) != len(deps):
        stuck = next(k for k, n in missing.items() if n > 0)
        raise ValueError(f"the dask graph has a cycle through key {stuck!r}")

    # Kinds, forward: what the manager can know without running anything.
    kinds: dict[Key, str] = {}
    static: set[Key] = set()
    for k in order:
        node = graph[k]
        if isinstance(node, DataNode):
            kinds[k] = "data"
            static.add(k)
        elif isinstance(node, Alias):
            kinds[k] = "alias"
            if node.target in static:
                static.add(k)
        elif is_pure_container(node):
            kinds[k] = "container"
            if all(d in static for d in deps[k]):
                static.add(k)
        else:
            kinds[k] = "remote"

    # Backward: which values the manager must hold; pure containers resolved in the manager when
    # they are wanted there anyway (or cost nothing), else run on a worker like any task.
    needs = set(targets) | set(keep)
    for k in reversed(order):
        kind = kinds[k]
        if kind == "container":
            kind = kinds[k] = "local" if (k in needs or k in static) else "remote"
        if kind in ("alias", "local") and k in needs:
            needs.update(deps[k])
    return GraphPlan(graph, targets, order, kinds, deps, dependents, depth, needs)
