"""``vine_benchmark parsl-cpu``: CPU per call by process, from a real parslvine run."""

from __future__ import annotations

import argparse
import os

import pytest

from core.tools import bench_parsl


@pytest.mark.timeout(300)
def test_parsl_cpu_reports_each_process_of_a_regular_run():
    rows = bench_parsl.run("parsl-cpu", argparse.Namespace(vs="parslvine-regular", tasks=100))
    assert [r["peer"] for r in rows] == ["parslvine-regular"]
    row = rows[0]
    cpu = row["cpu_ms_per_call"]
    assert row["calls"] == 100 and row["tasks_per_s"] > 0
    # Regular mode: the manager in its own process, each call forked by the worker's fork server.
    for role in ("manager process", "worker", "fork server", "forked children"):
        assert cpu.get(role, 0) > 0, f"no CPU counted for {role!r}: {cpu}"
    # The user's process, by thread: each thread's CPU comes in 10 ms ticks, and one thread's share
    # of 100 calls (the DFK's launch thread: ~0.1 ms a call) can round to none; all of them cannot.
    assert sum(v for k, v in cpu.items() if k.startswith("user: ")) > 0, f"no CPU counted for the user's process: {cpu}"
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=0.01)
    # The whole machine's busy cores meanwhile: some, and at most all of them.
    assert 0 < row["machine_busy_cores"] <= (os.cpu_count() or 1)
    # A fork writes pages the server and the child then share: both take copy-on-write faults.
    assert row["minor_faults_per_call"]["fork server"] > 0 and row["minor_faults_per_call"]["child"] > 0


def test_parsl_cpu_refuses_peers_it_cannot_measure():
    with pytest.raises(ValueError, match="parslvine peers only"):
        bench_parsl.run("parsl-cpu", argparse.Namespace(vs="htex", tasks=100))
