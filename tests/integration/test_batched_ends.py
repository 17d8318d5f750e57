"""The manager takes the task ends of one socket read together (core/manager/links.py, _defer_finish):
one scheduling pass for a run of ``complete`` frames. These tests send such runs in one write from a
raw-socket worker and check that the batching changes nothing a user sees: every end in the run is
kept with its own output, a second end of the same task in the run is judged after the first (as
if they had come in two reads), and a bad frame after a run of ends leaves the ends before it done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

import core as vine
from core.wire.protocol import encode_frame
from tests.conftest import wait_until
from tests.integration.test_hostile_peers import HostileWorker, assert_still_works

pytestmark = pytest.mark.timeout(90)


def _complete(tid: int, code: int = 0, out: bytes = b"") -> bytes:
    return encode_frame({"type": "complete", "id": tid, "result": 0, "exit_code": code}, out)


def _given(m, fw: HostileWorker, feature: str, n: int) -> list[int]:
    """Submit n tasks only ``fw`` can run; return their ids once it holds all of them."""
    wait_until(lambda: m.stats.workers_connected == 2, 15, "the raw-socket worker to join")
    ids = []
    for i in range(n):
        t = vine.Task(f"echo {i}")
        t.add_feature(feature)
        t.set_cores(1)
        t.set_memory(10)
        ids.append(m.submit(t))
    got = {fw.until("task")["task"]["id"] for _ in ids}
    assert got == set(ids), (got, ids)
    return ids


@contextlib.contextmanager
def raw_worker(m, name: str, cores: int) -> Iterator[HostileWorker]:
    """A raw-socket worker with ``cores`` and the feature ``name``; gone afterwards, the manager still working."""
    fw = HostileWorker(m.port, name, features=(name,), cores=cores, disk=100)
    try:
        yield fw
    finally:
        fw.close()
    wait_until(lambda: m.stats.workers_connected == 1, 15, "the worker to leave")
    assert_still_works(m)


def test_a_run_of_ends_in_one_read_keeps_each(m):
    with raw_worker(m, "batch", 4) as fw:
        ids = _given(m, fw, "batch", 4)
        fw.sock.sendall(b"".join(_complete(tid, code=i, out=f"out {i}\n".encode()) for i, tid in enumerate(ids)))
        done = {}
        for _ in ids:
            t = m.wait(15)
            assert t is not None, f"only {sorted(done)} of {ids} came back"
            done[t.id] = t
        for i, tid in enumerate(ids):
            t = done[tid]
            assert (t.result, t.exit_code, t.output) == ("success", i, f"out {i}\n"), tid
            assert t.hostname == "hostile"
        assert m.stats.workers_connected == 2, "an honest worker was disconnected"
        # the four cores are free again: four more tasks go to it at once
        again = _given(m, fw, "batch", 4)
        fw.sock.sendall(b"".join(_complete(tid) for tid in again))
        assert sorted(m.wait(15).id for _ in again) == sorted(again)


def test_a_second_end_of_a_task_in_the_same_read_is_judged_after_the_first(m):
    with raw_worker(m, "twice", 2) as fw:
        first, second = _given(m, fw, "twice", 2)
        # first's end twice (the second with another exit code and output), then second's end
        fw.sock.sendall(_complete(first, 3, b"kept\n") + _complete(first, 9, b"dropped\n") + _complete(second, 0, b"b\n"))
        done = {t.id: t for t in (m.wait(15), m.wait(15))}
        assert sorted(done) == sorted((first, second))
        assert (done[first].exit_code, done[first].output) == (3, "kept\n")
        assert (done[second].result, done[second].output) == ("success", "b\n")
        assert m.wait(0.2) is None, "a task came back twice"
        assert m.stats.workers_connected == 2


def test_a_bad_frame_after_a_run_of_ends_leaves_those_ends_done(m):
    with raw_worker(m, "spoilt", 3) as fw:
        a, b, c = _given(m, fw, "spoilt", 3)
        bad = encode_frame({"type": "complete", "id": "not a task id", "result": 0, "exit_code": 0})
        fw.sock.sendall(_complete(a, 0, b"a\n") + _complete(b, 0, b"b\n") + bad)
        assert fw.closed_by_manager(), "the manager kept a worker that sent a bad frame"
        done = {t.id: t for t in (m.wait(15), m.wait(15))}
        assert sorted(done) == sorted((a, b)), done
        assert [(done[i].result, done[i].output) for i in (a, b)] == [("success", "a\n"), ("success", "b\n")]
        # c was on the worker that left: back in the queue, not lost
        assert m.stats.tasks_waiting + m.stats.tasks_on_workers >= 1
        m.cancel_by_task_id(c)
        t = m.wait(15)
        assert t is not None and t.id == c and t.result != "success"
