"""Every dask collection through ``DaskVine.get``, compared with dask's threaded scheduler.

Runs in both dask worlds: dask 2025.3 (HighLevelGraphs of old-style tuples, dask-awkward) and dask
2026 (expression objects, task specs). Each test runs in both task modes.
"""

from __future__ import annotations

import os

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest


def threaded(*colls):
    return dask.compute(*colls, scheduler="threads")


def test_delayed(dv, mode):
    @dask.delayed
    def square(x):
        return x * x

    @dask.delayed
    def total(xs):
        return sum(xs)

    parts = [square(i) for i in range(12)]
    result = total(parts)
    assert result.compute(scheduler=dv.get, task_mode=mode) == threaded(result)[0] == sum(i * i for i in range(12))


def test_array_transpose_reduction_and_rechunk(dv, mode):
    x = da.arange(36 * 36, chunks=12 * 36).reshape(36, 36).rechunk((12, 12))
    y = (x + x.T).sum(axis=0)
    z = (x + x.T).rechunk((18, 6)).mean()
    got_y, got_z = dask.compute(y, z, scheduler=dv.get, task_mode=mode)
    want_y, want_z = threaded(y, z)
    np.testing.assert_array_equal(got_y, want_y)
    assert got_z == want_z


def test_bag(dv, mode):
    b = db.from_sequence(range(40), npartitions=5).map(lambda v: v % 7).frequencies()
    assert sorted(b.compute(scheduler=dv.get, task_mode=mode)) == sorted(threaded(b)[0])


def test_dataframe_groupby_merge_csv_parquet(dv, mode, tmp_path):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    pytest.importorskip("pyarrow")
    left = pd.DataFrame({"k": [i % 5 for i in range(60)], "v": range(60)})
    right = pd.DataFrame({"k": range(5), "name": [f"n{i}" for i in range(5)]})
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    for i in range(3):
        left.iloc[i * 20:(i + 1) * 20].to_csv(csv_dir / f"part{i}.csv", index=False)
    ddf = dd.read_csv(str(csv_dir / "part*.csv"))
    merged = ddf.merge(dd.from_pandas(right, npartitions=2), on="k")
    per_name = merged.groupby("name").v.sum()
    got = per_name.compute(scheduler=dv.get, task_mode=mode).sort_index()
    want = per_name.compute(scheduler="threads").sort_index()
    pd.testing.assert_series_equal(got, want)

    # to_parquet writes on the workers (they share this filesystem). Read back with pyarrow itself:
    # dask 2025.3's read_parquet trips a pandas 3 deprecation warning (an error under this suite).
    import pyarrow.parquet as pq

    out = tmp_path / f"pq-{mode}"
    merged.to_parquet(str(out), compute=True, compute_kwargs={"scheduler": dv.get, "task_mode": mode})
    assert len([n for n in os.listdir(out) if n.endswith(".parquet")]) >= 1
    back = pq.read_table(str(out)).to_pandas().sort_values(["k", "v"]).reset_index(drop=True)
    expect = merged.compute(scheduler="threads").sort_values(["k", "v"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back[expect.columns], expect, check_dtype=False)


def test_dask_awkward(dv, mode):
    ak = pytest.importorskip("awkward")
    dak = pytest.importorskip("dask_awkward")
    arr = ak.Array([{"x": float(i), "y": [j for j in range(i % 4)]} for i in range(30)])
    coll = dak.from_awkward(arr, npartitions=3)
    total = dak.sum(coll.x * 2) + ak.sum(ak.num(arr.y))
    counts = dak.num(coll.y, axis=1)
    got_total, got_counts = dask.compute(total, counts, scheduler=dv.get, task_mode=mode)
    want_total, want_counts = dask.compute(total, counts, scheduler="threads")
    assert got_total == want_total
    assert got_counts.tolist() == want_counts.tolist()
