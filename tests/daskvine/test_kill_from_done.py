"""A worker SIGKILLed from ``vine_done`` in the middle of a lazy-transfers graph (notebook 02's pattern).

notebooks/02-dask-awkward.ipynb kills worker "a" from its ``vine_done`` callback after the 12th
finished task and starts worker "c", with ``lazy_transfers=True``: the dead worker's temps must be
re-made by lineage, the graph must finish with the threaded scheduler's answer, and ``get`` must
return promptly, not stall once the manager has no work left. Each run is bounded (pytest-timeout
fails a stall with every thread's stack); the kill lands at a few points of the graph.
"""

from __future__ import annotations

import signal

import dask
import dask.array as da
import numpy as np
import pytest

from tests.conftest import WorkerProcess, wait_for_workers

N_PARTITIONS, PER_PARTITION = 16, 20_000
BINS = np.linspace(0, 150, 51)


def partition(seed):
    rng = np.random.default_rng(seed)
    return rng.exponential(15.0, PER_PARTITION) + 3.0


def wanted_graph():
    parts = [da.from_delayed(dask.delayed(partition)(i), shape=(PER_PARTITION,), dtype=float) for i in range(N_PARTITIONS)]
    values = da.concatenate(parts)
    return {
        "histogram": da.histogram(values, bins=BINS)[0],
        "sqrt histogram": da.histogram(np.sqrt(values), bins=BINS)[0],
        "above 20": (values > 20).sum(),
    }


@pytest.mark.timeout(90)  # a quiet machine takes 5-10 s, a loaded one 25: a stall fails here, with the stacks
@pytest.mark.parametrize("kill_after", [4, 12, 24])
def test_worker_killed_from_vine_done_with_lazy_transfers_finishes(tmp_path, kill_after):
    from daskvine import DaskVine

    wanted = wanted_graph()
    reference = dask.compute(*wanted.values(), scheduler="threads")
    m = DaskVine(port=0, run_info_path=str(tmp_path / "vine-run-info"))
    workers = {name: WorkerProcess(m.port, str(tmp_path / name), cores=1, memory=2000, disk=4000) for name in "ab"}
    try:
        wait_for_workers(m, 2)
        finished = []

        def on_done(key, task):
            finished.append((key, task.addrport))
            if len(finished) == kill_after:
                workers["a"].kill(signal.SIGKILL)
                workers["c"] = WorkerProcess(m.port, str(tmp_path / "c"), cores=1, memory=2000, disk=4000)

        # The notebook's call: function calls (the default task mode), temps left on the workers.
        got = dask.compute(*wanted.values(), scheduler=m.get, lazy_transfers=True, resources={"cores": 1},
                           vine_done=on_done)
        assert "c" in workers, f"only {len(finished)} tasks finished: worker a was never killed"
        assert workers["a"].proc.wait(10) == -signal.SIGKILL
        for name, mine, theirs in zip(wanted, got, reference):
            assert np.array_equal(mine, theirs), f"{name} differs from the threaded scheduler"
        assert m.stats.workers_lost == 1
        assert m.empty()
        # The manager is clean after the loss: the same graph again, on b and c.
        again = dask.compute(*wanted.values(), scheduler=m.get, lazy_transfers=True)
        assert all(np.array_equal(x, y) for x, y in zip(again, reference))
    finally:
        m.close()
        for w in workers.values():
            w.reap()
