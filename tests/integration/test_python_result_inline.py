"""A PythonTask's small result comes back inside its ``complete`` message, not as a stream before it.

Up to 64 KiB (core.api.python_task.RESULT_IN_COMPLETE_LIMIT) the worker puts the result's bytes at
the start of the complete's payload, its stdout after them; a larger result, or one from a worker
the manager did not allow it (an older worker), is still streamed (file_begin, file_chunk,
file_end) before the complete, and the manager takes either. These tests run real workers (and, for
what a worker may not send, a raw socket speaking the framing), count the frames the manager
handles, and check that results, stdout, cached results and a SIGKILLed worker's tasks all come
back as before.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest

import core as vine
from core.api.python_task import RESULT_IN_COMPLETE_LIMIT
from core.manager import links
from tests.conftest import drain, run, wait_until
from tests.integration.test_hostile_peers import HostileWorker

CACHED: dict[str, int] = {}  # outputs the workers reported cached in their completes (the frames fixture)


@pytest.fixture
def frames(monkeypatch) -> Iterator[collections.Counter[str]]:
    """The types of the frames the manager handles from workers (counted, then handled as always)."""
    seen: collections.Counter[str] = collections.Counter()
    CACHED.clear()
    handle = links.WorkerLinks._on_worker_frame

    def counted(self: Any, link: Any, frame: Any) -> None:
        seen[frame.type] += 1
        if frame.type == "complete":
            CACHED.update(frame.message.cached)
        handle(self, link, frame)

    monkeypatch.setattr(links.WorkerLinks, "_on_worker_frame", counted)
    yield seen


def say_and_add(x: int) -> int:
    print(f"adding one to {x}")
    return x + 1


def sized(n: int) -> bytes:
    return b"r" * n


def loud(n: int) -> int:
    os.write(1, b"s" * n)
    return n


def slow_double(x: int) -> int:
    time.sleep(0.05)
    return 2 * x


@pytest.mark.timeout(120)
def test_small_results_and_their_stdout_come_in_the_complete_alone(manager, start_worker, frames):
    start_worker(manager, cores=2)
    tasks = [vine.PythonTask(say_and_add, i) for i in range(12)]
    empty = vine.PythonTask(sized, 0)
    empty.disable_output_serialization()
    for t in [*tasks, empty]:
        manager.submit(t)
    drain(manager, 90)
    assert [t.output for t in tasks] == list(range(1, 13))
    assert [t.std_output for t in tasks] == [f"adding one to {i}\n" for i in range(12)]
    assert empty.output == b"" and empty.result == "success"
    assert frames["complete"] == 13
    assert frames["file_begin"] == frames["file_chunk"] == frames["file_end"] == 0


@pytest.mark.timeout(120)
def test_a_result_over_the_limit_is_streamed_before_the_complete(manager, start_worker, frames):
    start_worker(manager, cores=1)
    at_limit = vine.PythonTask(sized, RESULT_IN_COMPLETE_LIMIT)  # raw bytes: exactly the limit, inline
    at_limit.disable_output_serialization()
    over = vine.PythonTask(sized, RESULT_IN_COMPLETE_LIMIT + 1)
    over.disable_output_serialization()
    big = vine.PythonTask(sized, 3 << 20)  # pickled, three chunks
    for t in (at_limit, over, big):
        run(manager, t, 60)
    assert at_limit.output == b"r" * RESULT_IN_COMPLETE_LIMIT
    assert over.output == b"r" * (RESULT_IN_COMPLETE_LIMIT + 1)
    assert big.output == b"r" * (3 << 20)
    # One chunk for the first, four for 3 MiB pickled (a few bytes over three chunks).
    assert frames["file_begin"] == 2 and frames["file_end"] == 2 and frames["file_chunk"] == 1 + 4


@pytest.mark.timeout(120)
def test_a_stdout_streamed_ahead_still_leaves_the_result_in_the_complete(manager, start_worker, frames):
    start_worker(manager, cores=1)
    t = run(manager, vine.PythonTask(loud, 5 << 20), 60)  # over the 4 MiB that travel inline
    assert t.output == 5 << 20
    assert len(t.std_output) == 5 << 20 and set(t.std_output) == {"s"}
    assert frames["file_begin"] == 1  # the stdout's stream only


@pytest.mark.timeout(120)
def test_a_result_kept_in_the_worker_cache_is_announced_as_cached(manager, start_worker, frames):
    start_worker(manager, cores=1)
    kept = vine.PythonTask(say_and_add, 41)
    kept.set_output_cache("workflow")
    plain = vine.PythonTask(say_and_add, 1)
    run(manager, kept, 60)
    run(manager, plain, 60)
    assert (kept.output, plain.output) == (42, 2)
    assert kept.output_file.cache_name in CACHED  # sent home inside the complete, and kept there
    assert plain.output_file.cache_name not in CACHED  # a task-level result is not kept
    assert frames["file_begin"] == 0


@pytest.mark.timeout(150)
def test_a_worker_sigkilled_mid_run_loses_no_result(manager, start_worker):
    first = start_worker(manager, cores=1)
    start_worker(manager, cores=1)
    tasks = [vine.PythonTask(slow_double, i) for i in range(40)]
    for t in tasks:
        manager.submit(t)
    done = []
    while len(done) < 6:
        t = manager.wait(30)
        assert t is not None
        done.append(t)
    first.kill(signal.SIGKILL)
    done += drain(manager, 120)
    assert sorted(t.output for t in done) == [2 * i for i in range(40)]
    assert all(t.result == "success" for t in done)


def _given_task(m: Any, hw: HostileWorker) -> tuple[vine.PythonTask, dict[str, Any]]:
    t = vine.PythonTask(say_and_add, 1)
    m.submit(t)
    definition = hw.until("task")["task"]
    return t, definition


def test_a_complete_carrying_a_result_from_a_bare_peer_is_taken_by_the_same_rules(manager):
    hw = HostileWorker(manager.port, "inline-ok")
    try:
        t, definition = _given_task(manager, hw)
        assert definition["python"]["result_in_complete"] == RESULT_IN_COMPLETE_LIMIT
        name = definition["outputs"][0]["name"]
        value = cloudpickle.dumps(99)
        hw.send({"type": "complete", "id": definition["id"], "result": 0, "exit_code": 0,
                 "result_name": name, "result_size": len(value)}, value + b"printed\n")
        back = manager.wait_for_task_id(t.id, 30)
        assert back is t and t.output == 99 and t.std_output == "printed\n"
        # The old way (a stream, then the complete) is still taken.
        t2, definition = _given_task(manager, hw)
        hw.stream(definition["outputs"][0]["name"], cloudpickle.dumps(7), task=definition["id"])
        hw.send({"type": "complete", "id": definition["id"], "result": 0, "exit_code": 0})
        assert manager.wait_for_task_id(t2.id, 30) is t2 and t2.output == 7
    finally:
        hw.close()


@pytest.mark.parametrize("row", ["not-an-output", "sent-twice", "size-over-the-payload"])
def test_a_complete_carrying_what_was_not_asked_for_ends_that_worker(row, manager, caplog):
    caplog.set_level(logging.WARNING, logger="core.manager")
    hw = HostileWorker(manager.port, row)
    try:
        t, definition = _given_task(manager, hw)
        name, tid = definition["outputs"][0]["name"], definition["id"]
        value = cloudpickle.dumps(5)
        header = {"type": "complete", "id": tid, "result": 0, "exit_code": 0, "result_name": name, "result_size": len(value)}
        if row == "not-an-output":
            header["result_name"] = definition["inputs"][0]["name"]  # its function: an input
        elif row == "sent-twice":
            hw.stream(name, value, task=tid)  # streamed, then claimed again inside the complete
        else:
            header["result_size"] = len(value) + 1
        hw.send(header, value)
        assert hw.closed_by_manager()
        wait_until(lambda: manager.stats.workers_connected == 0, 15, "the worker to be dropped")
        words = "announced" if row == "size-over-the-payload" else "not an output"
        assert any(words in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert t.state != "done" or t.output != 5
    finally:
        hw.close()
