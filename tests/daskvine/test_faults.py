"""A worker SIGKILLed in the middle of a graph: lineage recovery of its temps, exact results."""

from __future__ import annotations

import signal
import time

import dask
import pytest

from tests.conftest import WorkerProcess, wait_for_workers


def leaf(i):
    time.sleep(0.05)
    return list(range(i * 10, i * 10 + 10))


def merge(a, b):
    time.sleep(0.05)
    return a + b


def tree_graph(n_leaves=8):
    dsk = {("leaf", i): (leaf, i) for i in range(n_leaves)}
    names, depth = [("leaf", i) for i in range(n_leaves)], 0
    while len(names) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(names), 2):
            k = ("merge", depth, j // 2)
            dsk[k] = (merge, names[j], names[j + 1])
            nxt.append(k)
        names = nxt
    dsk["total"] = (sum, names[0])
    return dsk, "total"


@pytest.mark.timeout(120)
def test_sigkilled_worker_mid_graph_costs_only_recomputation(tmp_path, mode):
    from dask.callbacks import Callback

    from daskvine import DaskVine

    m = DaskVine(port=0, run_info_path=str(tmp_path / "vine-run-info"))
    workers = [WorkerProcess(m.port, str(tmp_path / f"w{i}"), cores=1) for i in range(2)]
    spare: list[WorkerProcess] = []
    try:
        wait_for_workers(m, 2)
        dsk, key = tree_graph()
        want = dask.get(dsk, key)
        done = []
        killed = []

        def posttask(k, value, dsk, state, worker):
            done.append(k)
            if len(done) == 6 and not killed:
                # Every temp made so far is on these two workers: kill both, start two fresh ones.
                # Results still unconsumed must be re-made by re-running their producers.
                for w in workers:
                    w.kill(signal.SIGKILL)
                    killed.append(w.pid)
                spare.extend(WorkerProcess(m.port, str(tmp_path / f"w-spare{i}"), cores=1) for i in range(2))

        with Callback(posttask=posttask):
            got = m.get(dsk, key, task_mode=mode)
        assert killed, "the worker was never killed"
        assert got == want
        assert m.stats.workers_lost == 2
        assert m.stats.tasks_recovery >= 1  # lost temps were re-made by lineage, not by luck
        # The manager is clean and keeps working after the loss.
        assert m.get(dsk, key, task_mode=mode) == want
    finally:
        m.close()
        for w in workers + spare:
            w.reap()
