"""vine_benchmark's chain, queue-mem and python-cpu rows run and check what they measured (no timing asserted)."""

from __future__ import annotations

import pytest

from core.tools import bench_core


@pytest.mark.timeout(120)
def test_chain_row_runs_its_tasks_and_its_floor() -> None:
    row = bench_core.chain_rate(6)  # raises if the last temp does not hold 5
    assert row["workload"] == "chain" and row["length"] == 6
    assert row["tasks_per_s"] > 0 and row["floor_tasks_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["tasks_per_s"] / row["floor_tasks_per_s"], rel=0.05)


@pytest.mark.timeout(120)
def test_queue_memory_row_counts_every_queued_task() -> None:
    row = bench_core.queue_memory(3000, trace=True)  # the child raises unless 3000 tasks are waiting
    assert row["workload"] == "queue-mem" and row["tasks"] == 3000
    assert row["traced_bytes_per_task"] > 0 and row["floor_bytes_per_task"] >= 0
    assert row["submits_per_s"] > 0 and row["floor_per_s"] > 0


@pytest.mark.timeout(120)
def test_python_cpu_row_finds_the_fork_server_and_its_children() -> None:
    from core.tools import bench_python

    row = bench_python.python_cpu(30)  # raises unless every task succeeds and one worker is found
    ms = row["cpu_ms_per_task"]
    assert row["workload"] == "python-cpu" and row["tasks"] == 30
    # Each task is a fork of the server: with no server found these would be zero.
    assert ms["fork server"] > 0 and ms["forked children"] > 0 and ms["manager process"] > 0
    assert ms["total"] == pytest.approx(sum(v for k, v in ms.items() if k != "total"), abs=0.01)
    assert row["minor_faults_per_task"]["child"] > 0 and row["minor_faults_per_task"]["fork server"] > 0
