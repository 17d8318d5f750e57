"""The manager process's collector: it waits for results only while the manager has calls to give.

A call was once counted as outstanding before the manager had it, so with one call at a time the
collector's ``wait()`` found nothing in flight, returned at once and was called again, in a loop
that took the interpreter lock from the very submit it waited for (5-8 ms of the manager process's
CPU per call instead of ~3). Here the real server runs in this process, with a real worker, and
the calls it makes to its manager's ``wait`` are counted.
"""

from __future__ import annotations

import socket
import threading

import pytest
from parsl.serialize import serialize

from parslvine.configs import TaskVineManagerConfig
from parslvine.manager_process import _ManagerServer, recv_frame, send_frame
from parslvine.resources import settings_from_spec
from parslvine.runner import decode_data, encode_data
from parslvine.staging import plan_staging
from tests.conftest import wait_for_workers

CALLS = 12


def _triple(x):
    return 3 * x


@pytest.mark.timeout(120)
def test_one_call_at_a_time_does_not_make_the_collector_spin(tmp_path, start_worker):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    config = TaskVineManagerConfig(port=0, vine_log_dir=str(tmp_path / "vine"))
    server = _ManagerServer(theirs, {"config": config, "factory_config": None, "launch": "manual"})
    server.start()
    waits = []
    real_wait = server.m.wait

    def counted_wait(timeout="wait_forever"):
        waits.append(timeout)
        return real_wait(timeout)

    server.m.wait = counted_wait  # the real wait, counted
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    try:
        start_worker(server.m, cores=2)
        wait_for_workers(server.m, 1)
        function = serialize(_triple)
        for i in range(CALLS):
            settings = settings_from_spec({}, "regular", lambda key: None)
            settings.category = "parsl-default"
            send_frame(ours, [("call", i, settings.to_wire(), function, encode_data({"args": (i,), "kwargs": {}}),
                               plan_staging((i,), {}, False).to_wire())])
            (kind, executor_id, ok, payload, _code), = recv_frame(ours)
            assert (kind, executor_id, ok) == ("done", i, True)
            assert decode_data(payload) == 3 * i
        # Per call: one wait that returns it and one that finds the queue drained, plus a timed-out
        # wait now and then (every 0.5 s) while a call runs. The spin made hundreds.
        assert len(waits) <= 3 * CALLS + 10, f"{len(waits)} waits for {CALLS} calls"
    finally:
        send_frame(ours, [("stop",)])
        serving.join(60)
        ours.close()
        theirs.close()
    assert not serving.is_alive()
