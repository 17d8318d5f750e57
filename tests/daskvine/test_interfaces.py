"""The ways a user hands work to DaskVine, in both dask worlds, and the TaskVine manual's example."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from dask.utils_test import inc


def test_scheduler_config_nested_compute_and_plain_dict(dv):
    x = da.arange(100, chunks=10)
    a, b, c = x.sum(), (x * 2).max(), x.mean()
    with dask.config.set(scheduler=dv.get):
        assert a.compute() == 4950
        got = dask.compute(a, (b, c))
    assert got == (4950, (198, 49.5))
    assert dask.compute(a, (b, c), scheduler=dv.get) == got
    assert dv.get({"x": 1, "y": (inc, "x")}, "y") == 2
    assert dv.get({"x": 1, "y": (inc, "x")}, [["y"], "x"]) == ((2,), 1)
    assert dv({"x": 1, "y": (inc, "x")}, "y") == 2  # DaskVine is callable as its own get


def test_expression_objects_go_straight_to_get(dv):
    x = da.ones((20, 20), chunks=5)
    expr = (x + x.T).sum()
    # dask 2026 hands get() expression objects, dask 2025.3 HighLevelGraphs: get accepts both and
    # the collection itself.
    keys = expr.__dask_keys__()
    assert np.asarray(dv.get(expr, keys)).sum() == 800
    assert np.asarray(dv.get(expr.__dask_graph__(), keys)).sum() == 800


def test_persist_is_not_hijacked(dv):
    # dask.persist calls get.__self__.persist if it exists; DaskVine must not define one.
    assert not hasattr(dv, "persist")
    (y,) = dask.persist(da.arange(10, chunks=5) + 1, scheduler=dv.get)
    assert y.sum().compute(scheduler="threads") == 55


def test_missing_key_raises_keyerror(dv):
    with pytest.raises(KeyError):
        dv.get({"x": 1}, "nope")


def test_core_dask_vine_is_daskvine():
    import core
    import daskvine

    assert core.DaskVine is daskvine.DaskVine
