"""Graph normalisation and planning, without workers: culling, kinds, scale, no mutation."""

from __future__ import annotations

import copy
import time

import pytest
from dask.utils_test import add, inc

from daskvine.graph import flatten_keys, nest_results, plan_graph, to_task_graph


def plan(dsk, keys, keep=()):
    return plan_graph(to_task_graph(dsk), keys, keep)


def test_only_ancestors_of_the_keys_are_planned():
    dsk = {"a": 1, "b": (inc, "a"), "c": (inc, "b"), "unrelated": (inc, "a"), "other": (add, "unrelated", 1)}
    p = plan(dsk, "c")
    assert set(p.order) == {"a", "b", "c"}
    assert p.kinds == {"a": "data", "b": "remote", "c": "remote"}
    assert p.order.index("a") < p.order.index("b") < p.order.index("c")


def test_aliases_literals_and_containers_are_resolved_in_the_manager():
    dsk = {"a": [1, 2, 3], "b": "a", "x": (inc, 1), "y": ["x", "b"], "z": (sum, "y"), "w": ["x", (inc, "x")]}
    p = plan(dsk, ["y", "z"])
    assert p.kinds["a"] == "data"
    assert p.kinds["b"] == "alias"
    assert p.kinds["y"] == "local"  # a requested list of keys: built in the manager from their values
    assert p.kinds["x"] == p.kinds["z"] == "remote"
    assert "x" in p.needs_value  # the local container needs it in the manager
    p2 = plan(dsk, "w")
    assert p2.kinds["w"] == "remote"  # a list with a function call inside is a task


def test_a_container_that_is_not_wanted_in_the_manager_runs_on_a_worker():
    dsk = {"x": (inc, 1), "pair": ["x", "x"], "n": (len, "pair")}
    p = plan(dsk, "n")
    assert p.kinds["pair"] == "remote" and "x" not in p.needs_value


def test_bad_keys_and_missing_dependencies():
    from dask._task_spec import Task, TaskRef

    with pytest.raises(KeyError):
        plan({"a": 1}, "nope")
    with pytest.raises(KeyError):
        plan({"a": 1}, [["a"], "nope"])
    with pytest.raises(ValueError, match="Missing dependency"):
        plan_graph({"b": Task("b", inc, TaskRef("gone"))}, "b")


def test_input_is_never_mutated():
    from dask.highlevelgraph import HighLevelGraph

    dsk = {"x": 1, "y": (inc, "x"), "z": (add, (inc, "x"), "y"), "al": "z"}
    before = copy.deepcopy(dsk)
    keys = [["al"], "y"]
    keys_before = copy.deepcopy(keys)
    plan(dsk, keys)
    assert dsk == before and keys == keys_before
    hlg = HighLevelGraph({"a": dict(dsk)}, {"a": set()})
    plan(hlg, "z")
    assert dict(hlg.layers["a"]) == before


def test_results_are_shaped_as_dask_shapes_them():
    values = {"x": 1, "y": 2, ("t", 0): 3}
    assert nest_results("x", values) == 1
    assert nest_results(("t", 0), values) == 3
    assert nest_results([["x"], "y"], values) == ((1,), 2)
    assert nest_results([], values) == ()
    assert flatten_keys([["x", [("t", 0)]], "y"]) == ["x", ("t", 0), "y"]


def test_deep_chain_and_large_graph_plan_fast_and_without_recursion():
    n = 10_000
    chain = {f"x{i + 1}": (inc, f"x{i}") for i in range(n)}
    chain["x0"] = 0
    t0 = time.perf_counter()
    p = plan(chain, f"x{n}")
    assert len(p.order) == n + 1 and p.depth[f"x{n}"] == n

    wide = {("leaf", i): (inc, i) for i in range(100_000 - 1)}
    wide["total"] = (sum, [("leaf", i) for i in range(100_000 - 1)])
    p2 = plan(wide, "total")
    elapsed = time.perf_counter() - t0
    assert len(p2.order) == 100_000 and p2.kinds["total"] == "remote"
    # Turning graphs into plans must cost far less than running them (~0.2-4 ms a task on workers).
    assert elapsed < 20, f"planning 110,000 nodes took {elapsed:.1f}s"
