import os, time, signal
import pytest
import core as vine
from tests.conftest import drain, wait_for_workers, wait_until
from tests.integration.conftest import records

def test_stopped_worker_with_pending_send(manager, start_worker, tmp_path):
    m = manager
    m.tune("keepalive-interval", 1); m.tune("keepalive-timeout", 2)
    w = start_worker(m, cores=1)
    wait_for_workers(m, 1)
    w.kill(signal.SIGSTOP)
    src = tmp_path / "big"
    with open(src, "wb") as fh: fh.write(os.urandom(40_000_000))
    t = vine.Task("wc -c < big"); t.add_input(m.declare_file(str(src)), "big")
    tid = m.submit(t)
    wait_until(lambda: m.stats.workers_connected == 0, 20)
    w2 = start_worker(m, cores=1)
    t = m.wait_for_task_id(tid, 30)
    assert t.output.strip() == "40000000"
    wait_until(lambda: len([r for r in records(m, "WORKER") if r[2] == "DISCONNECTION"]) == 1, 10, "disconnection record")
