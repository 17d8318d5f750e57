"""FuturesExecutor end to end: chains through temps, exceptions, cancellation, wait/as_completed, helpers."""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time

import cloudpickle
import pytest

import core as vine
import core.futures as vf
from core.api.python_task import RemoteTraceback
from tests.conftest import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x):
    return x + 1


def mul(a, b):
    return a * b


def total(items):
    return sum(items)


def explode(msg):
    raise ValueError(msg)


def sleep_for(seconds):
    time.sleep(seconds)
    return seconds


def pair_sum(a, b):
    return a + b


def submit1(ex, fn, *args):
    """Submit ``fn(*args)`` as a 1-core task (a task without resources takes a whole worker)."""
    task = ex.future_task(fn, *args)
    task.set_cores(1)
    return ex.submit(task)


@pytest.fixture
def ex(manager, start_worker):
    """An executor over the test's manager, with one 2-core worker (no factory)."""
    start_worker(manager, cores=2)
    executor = vine.FuturesExecutor(manager=manager, factory=False)
    try:
        yield executor
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def test_chain_stays_on_workers(ex):
    a = ex.submit(inc, 1)
    b = ex.submit(inc, a)
    c = ex.submit(mul, a, b)  # the same temp twice
    d = ex.submit(total, [a, b, c, 100])  # futures inside a list
    assert d.result(timeout=60) == 2 + 3 + 6 + 100
    assert isinstance(a, vine.VineFuture) and a.done() and not a.running()
    assert ex.manager.stats.tasks_done == 4
    assert (a.result(), b.result(), c.result()) == (2, 3, 6)  # fetched from the workers only now


def test_exception_is_reraised_with_remote_traceback(ex):
    bad = ex.submit(explode, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        bad.result(timeout=60)
    assert isinstance(info.value.__cause__, RemoteTraceback) and "explode" in str(info.value.__cause__)
    assert isinstance(bad.exception(), ValueError)
    downstream = ex.submit(inc, bad)  # a dependent of a failed future fails with the same exception
    with pytest.raises(ValueError, match="boom"):
        downstream.result(timeout=60)
    task = ex.future_task(explode, "again")
    ex.submit(task)
    assert isinstance(task.output(timeout=60), ValueError)


def test_result_timeout_running_and_cancel(ex):
    slow = ex.submit(sleep_for, 60)
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.2)
    wait_until(slow.running, 30, "the task to start on the worker")
    called = threading.Event()
    slow.add_done_callback(lambda f: called.set())
    assert slow.cancel() and slow.cancelled() and slow.done() and not slow.running()
    assert called.is_set()
    with pytest.raises(concurrent.futures.CancelledError):
        slow.result()
    assert not slow.cancel() or slow.cancelled()
    assert ex.submit(inc, 41).result(timeout=60) == 42  # the worker is free again
    done_fut = ex.submit(inc, 1)
    done_fut.result(timeout=60)
    assert not done_fut.cancel()


def test_callbacks_fire_on_completion_without_result(ex):
    seen = []
    ev = threading.Event()
    fut = ex.submit(inc, 1)
    fut.add_done_callback(lambda f: (seen.append(f.result()), ev.set()))
    assert ev.wait(60)
    assert seen == [2]


def test_wait_and_as_completed_with_timeouts(ex):
    quick = submit1(ex, inc, 1)
    slow = submit1(ex, sleep_for, 60)
    res = vf.wait([quick, slow], timeout=30, return_when=vf.FIRST_COMPLETED)
    assert quick in res.done and slow in res.not_done
    res = vf.wait([quick, slow], timeout=0.2)
    assert slow in res.not_done
    got = []
    with pytest.raises(TimeoutError):
        for f in vf.as_completed([quick, slow], timeout=1):
            got.append(f)
    assert got == [quick]
    bad = submit1(ex, explode, "x")
    res = vf.wait([slow, bad], timeout=30, return_when=vf.FIRST_EXCEPTION)
    assert bad in res.done
    slow.cancel()
    assert vf.wait([slow], timeout=1).done == {slow}
    unsubmitted = ex.future_task(inc, 1)
    with pytest.raises(ValueError, match="never submitted"):
        vf.wait([unsubmitted], timeout=1)


def test_map_reduce_allpairs_odd_chunks(ex):
    assert ex.map(inc, range(7), chunk_size=3).result(timeout=60) == [x + 1 for x in range(7)]
    assert ex.reduce(total, range(10), chunk_size=3).result(timeout=60) == 45
    assert ex.reduce(total, range(5), chunk_size=1, fn_arity=3).result(timeout=60) == 10
    assert ex.reduce(total, [7]).result(timeout=60) == 7
    assert ex.allpairs(pair_sum, [1, 2], [10, 20, 30], chunk_size=4).result(timeout=60) == [[11, 21, 31], [12, 22, 32]]
    with pytest.raises(NotImplementedError):
        ex.map(inc, [1], library_name="lib")
    with pytest.raises(ValueError):
        ex.reduce(total, [])


def library_double(x):
    return 2 * x


def test_future_funcall_feeds_a_task(ex):
    lib = ex.manager.create_library_from_functions("futlib", library_double, explode)
    lib.set_cores(1)
    ex.manager.install_library(lib)
    call = ex.submit(ex.future_funcall("futlib", "library_double", 21))
    after = ex.submit(inc, call)  # held back until the call is done, then fed its value
    assert after.result(timeout=60) == 43
    assert call.result() == 42
    bad = ex.submit(ex.future_funcall("futlib", "explode", "in a library"))
    with pytest.raises(ValueError, match="in a library"):
        bad.result(timeout=60)
    held = ex.submit(inc, ex.submit(ex.future_funcall("futlib", "library_double", 1)))
    after_held = ex.submit(mul, held, 10)  # depends on a task that is itself still held back
    assert after_held.result(timeout=60) == 30
    assert held.result() == 3


def test_cancel_a_held_dependent(ex):
    lib = ex.manager.create_library_from_functions("slowlib", sleep_for)
    lib.set_cores(1)
    ex.manager.install_library(lib)
    call = ex.submit(ex.future_funcall("slowlib", "sleep_for", 60))
    dependent = ex.submit(inc, call)
    assert dependent.cancel() and dependent.cancelled()
    call.cancel()
    res = vf.wait([call, dependent], timeout=30)
    assert res.not_done == set()


def test_executor_on_a_laptop(tmp_path, monkeypatch):
    """FuturesExecutor(manager_name=...) with nothing else: its own manager and local workers."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VINE_CATALOG_DIR", str(tmp_path / "catalog"))
    with vine.FuturesExecutor(manager_name="futures-laptop-test") as ex:
        futs = [ex.submit(inc, i) for i in range(4)]
        assert [f.result(timeout=90) for f in futs] == [1, 2, 3, 4]
        assert ex.port == ex.manager.port
    assert ex.manager._closed
