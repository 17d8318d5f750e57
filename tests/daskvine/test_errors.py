"""Errors: a node's own exception, unpicklable results, worker-side failures and retries, interrupts."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from dask.utils_test import inc

from daskvine import GraphTaskFailed, UnpicklableResult


def boom(x):
    raise ValueError(f"bad input {x}")


def test_own_exception_is_raised_at_once_with_its_remote_traceback(dv, mode):
    submitted, ran = [], []
    dsk = {"a": 3, "b": (inc, "a"), "c": (boom, "b"), "d": (inc, "c")}
    with pytest.raises(ValueError, match="bad input 4") as info:
        dv.get(dsk, "d", task_mode=mode, vine_submit=lambda key, task: submitted.append(key),
               vine_done=lambda key, task: ran.append((key, task.exit_code)))
    exc = info.value
    assert "in boom" in exc.__vine_traceback__
    assert "in boom" in str(exc.__cause__)
    assert submitted.count("c") == 1  # not retried: the function itself raised
    if mode == "tasks":
        assert "d" not in submitted
    else:
        # Function calls are submitted ahead of their inputs (call pipelining), so "d" may already be
        # queued in core when "c" raises; it is never run (its input was never made) nor resubmitted.
        assert submitted.count("d") <= 1
        assert ("d", 0) not in ran
    assert any("'c'" in note for note in getattr(exc, "__notes__", ["'c'"]))


def make_lock(x):
    return threading.Lock()


def use_lock(lock):
    return lock.locked()


def test_unpicklable_result_names_its_key(dv, mode):
    with pytest.raises(UnpicklableResult, match="'lock'"):
        dv.get({"x": 1, "lock": (make_lock, "x")}, "lock", task_mode=mode)
    with pytest.raises(UnpicklableResult, match="'lock'"):
        dv.get({"x": 1, "lock": (make_lock, "x"), "used": (use_lock, "lock")}, "used", task_mode=mode)


def die_first_times(counter_dir, times, value):
    """Kill our own process (a worker-side failure, not an exception) the first ``times`` attempts."""
    n = len(os.listdir(counter_dir))
    if n < times:
        open(os.path.join(counter_dir, f"attempt{n}"), "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return value * 10


@pytest.mark.timeout(120)
def test_worker_side_failures_are_retried_up_to_retries(dv, mode, tmp_path):
    ok_dir, fail_dir = tmp_path / "ok", tmp_path / "fail"
    ok_dir.mkdir()
    fail_dir.mkdir()
    dsk = {"v": 4, "r": (die_first_times, str(ok_dir), 2, "v"), "out": (inc, "r")}
    assert dv.get(dsk, "out", task_mode=mode, retries=3) == 41
    assert len(os.listdir(ok_dir)) == 2

    dsk = {"v": 4, "r": (die_first_times, str(fail_dir), 5, "v"), "out": (inc, "r")}
    with pytest.raises(GraphTaskFailed, match="'r' failed 2 time"):
        dv.get(dsk, "out", task_mode=mode, retries=2)


def test_retries_below_one_is_an_error(dv):
    with pytest.raises(ValueError, match="retries"):
        dv.get({"a": 1, "b": (inc, "a")}, "b", retries=0)


def slow_inc(x):
    time.sleep(5)
    return x + 1


@pytest.mark.timeout(120)
def test_keyboard_interrupt_cancels_the_graph_and_the_manager_stays_usable(dv, mode):
    from dask.callbacks import Callback

    dsk = {("s", i): (slow_inc, i) for i in range(6)}
    dsk["total"] = (sum, [("s", i) for i in range(6)])
    seen = []

    def pretask(key, dsk, state):
        seen.append(key)
        if len(seen) == 3:
            raise KeyboardInterrupt

    t0 = time.monotonic()
    with Callback(pretask=pretask), pytest.raises(KeyboardInterrupt):
        dv.get(dsk, "total", task_mode=mode)
    # Running the six 5 s tasks on two workers would take 15 s; cancelled, at most the running ones finish.
    assert time.monotonic() - t0 < 12
    assert dv.empty()  # every task of the graph was cancelled and collected
    assert dv.get({"a": 1, "b": (inc, "a")}, "b", task_mode=mode) == 2


@pytest.mark.timeout(120)
def test_ctrl_c_while_get_waits(dv):
    """A real SIGINT (Ctrl-C) arriving while ``get`` blocks in wait: same clean cancellation."""
    import threading as th

    dsk = {("s", i): (slow_inc, i) for i in range(4)}
    dsk["total"] = (sum, [("s", i) for i in range(4)])
    timer = th.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            dv.get(dsk, "total")
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 12  # four 5 s tasks on two workers would take 10 s, plus the sum
    assert dv.empty()
    assert dv.get({"a": 1, "b": (inc, "a")}, "b") == 2
