"""vine_benchmark's chain and queue-mem rows run and check what they measured (no timing asserted)."""

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
