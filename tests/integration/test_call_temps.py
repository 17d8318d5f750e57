"""FunctionCall temp outputs: results that stay on workers, chains, failures, recovery, futures."""

from __future__ import annotations

import signal
import sys

import cloudpickle
import pytest

import core as vine
from core.api.library import FunctionCallNoResult
from core.errors import TaskError
from tests.conftest import drain, run, wait_for_workers, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- library functions ----------------------------------------------------------------------------------


def add(a, b):
    return a + b


def total(*values):
    return sum(values)


def explode(msg):
    raise ValueError(msg)


def unpicklable():
    import threading

    return threading.Lock()


def counted(path, value):
    """``value`` doubled, appending a line to ``path`` each time it runs (to count re-runs)."""
    with open(path, "a") as fh:
        fh.write("run\n")
    return value * 2


def length(text):
    return len(text)


def step(x, delay=0.0, mark=None, mark_at=-1):
    """``x + 1`` after ``delay`` s; writes ``mark`` when ``x`` reaches ``mark_at`` (to time a fault)."""
    import time

    time.sleep(delay)
    if mark and x == mark_at:
        with open(mark, "w") as fh:
            fh.write("reached")
    return x + 1


def install(m, name, mode="direct"):
    lib = m.create_library_from_functions(name, add, total, explode, unpicklable, counted, length, step, exec_mode=mode)
    lib.set_cores(1)
    m.install_library(lib)


def temp_call(name, fn, *args):
    c = vine.FunctionCall(name, fn, *args)
    c.enable_temp_output()
    return c


# --- chains ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "fork"])
def test_chain_of_calls_stays_on_the_worker(manager, start_worker, mode):
    start_worker(manager, cores=1)
    install(manager, f"chain-{mode}", mode)
    first = temp_call(f"chain-{mode}", "add", 1, 2)
    manager.submit(first)
    prev = first
    calls = [first]
    for i in range(5):
        nxt = temp_call(f"chain-{mode}", "add", prev, i)  # the call itself is the argument
        manager.submit(nxt)
        calls.append(nxt)
        prev = nxt
    last = vine.FunctionCall(f"chain-{mode}", "total", prev, first, 100)  # inline result at the end
    manager.submit(last)
    drain(manager, 60)
    assert all(c.result == "success" and c.exit_code == 0 for c in calls + [last])
    assert all(c.output_file is not None and c.output_file.kind == "temp" for c in calls)
    assert last.output_file is None
    assert last.output == (3 + 0 + 1 + 2 + 3 + 4) + 3 + 100
    # Temp results came back with no payload; reading .output fetches the temp from the worker.
    assert all(c._stdout == b"" for c in calls)
    assert calls[3].output == 3 + 0 + 1 + 2
    assert first.output == 3


def test_call_temps_feed_python_tasks_and_back(manager, start_worker):
    start_worker(manager, cores=1)
    install(manager, "mixed")
    call = temp_call("mixed", "add", 20, 1)
    manager.submit(call)
    task = vine.PythonTask(add, call, call)  # one temp, used twice
    task.enable_temp_output()
    manager.submit(task)
    back = vine.FunctionCall("mixed", "add", task, call)
    manager.submit(back)
    drain(manager, 60)
    assert task.output == 42
    assert back.output == 63
    assert len([m for m in task.inputs if m.file is call.output_file]) == 1


def test_two_workers_move_call_temps_between_them(manager, start_worker):
    for _ in range(2):
        start_worker(manager, cores=1)
    wait_for_workers(manager, 2)
    install(manager, "spread")
    parts = [temp_call("spread", "add", i, i) for i in range(8)]
    for p in parts:
        manager.submit(p)
    summed = vine.FunctionCall("spread", "total", *parts)
    manager.submit(summed)
    drain(manager, 60)
    assert summed.output == sum(2 * i for i in range(8))
    # Both workers made parts, so at least one temp moved to the other worker for the sum.
    assert len({p.addrport for p in parts}) == 2


# --- failures --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "fork"])
def test_exception_comes_back_inline_and_no_consumer_runs(manager, start_worker, mode):
    start_worker(manager, cores=1)
    install(manager, f"boom-{mode}", mode)
    bad = temp_call(f"boom-{mode}", "explode", "no value here")
    manager.submit(bad)
    consumer = vine.FunctionCall(f"boom-{mode}", "add", bad, 1)
    manager.submit(consumer)
    py_consumer = vine.PythonTask(add, bad, 1)
    manager.submit(py_consumer)
    drain(manager, 60)
    # The failure is visible on the call itself, with no fetch: exit code 1, the exception inline.
    assert (bad.result, bad.exit_code) == ("success", 1)
    err = bad.output
    assert isinstance(err, ValueError) and str(err) == "no value here" and "explode" in err.__vine_traceback__
    # No temp was made, so the consumers never ran on an exception value.
    for c in (consumer, py_consumer):
        assert c.result == "input missing"
    assert isinstance(consumer.output, FunctionCallNoResult)
    assert manager.stats.tasks_failed >= 3


def test_unpicklable_result_is_a_failure_not_a_temp(manager, start_worker):
    start_worker(manager, cores=1)
    install(manager, "lock")
    c = temp_call("lock", "unpicklable")
    t = run(manager, c)
    assert (t.result, t.exit_code) == ("success", 1)
    assert isinstance(c.output, RuntimeError) and "cannot be pickled" in str(c.output)


def test_temp_output_is_an_argument_only_once_submitted():
    c = temp_call("nowhere", "add", 1, 2)
    with pytest.raises(TaskError, match="enable_temp_output"):
        c._vine_reference()


# --- recovery --------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("big", [False, True], ids=["inline-args", "file-args"])
def test_lost_call_temp_is_recomputed(manager, start_worker, tmp_path, big):
    runs = tmp_path / "runs"
    holder = start_worker(manager, cores=1)
    install(manager, "recover")
    payload = "x" * (100_000 if big else 10)  # big arguments travel as a file, which must survive for the re-run
    producer = temp_call("recover", "counted", str(runs), payload)
    assert run(manager, producer).result == "success"
    assert producer._stdout == b""  # the value is only on the holder
    holder.kill(signal.SIGKILL)
    wait_until(lambda: manager.stats.workers_connected == 0, 30, "the holder to be noticed gone")
    start_worker(manager, cores=1)
    consumer = vine.FunctionCall("recover", "length", producer)
    t = run(manager, consumer, timeout=90)
    assert (t.result, t.exit_code) == ("success", 0)
    assert consumer.output == 2 * len(payload)
    assert runs.read_text().split() == ["run", "run"]  # exactly one hidden re-run of the producer


# --- futures ---------------------------------------------------------------------------------------------


def test_future_function_calls_chain_through_temps(manager, start_worker):
    start_worker(manager, cores=1)
    with vine.FuturesExecutor(manager=manager) as ex:
        install(manager, "futs")
        a = ex.future_funcall("futs", "add", 1, 2)
        a.enable_temp_output()
        fa = ex.submit(a)
        b = ex.future_funcall("futs", "add", fa, 10)
        b.enable_temp_output()
        fb = ex.submit(b)
        assert not fa._needs_value()  # b went to the manager at once, not held back for a's value
        fc = ex.submit(add, fb, 100)  # a PythonTask taking a call's temp
        assert fc.result(timeout=60) == 113
        assert fb.result(timeout=60) == 13
        assert fa.result() == 3
        bad = ex.future_funcall("futs", "explode", "future boom")
        bad.enable_temp_output()
        fbad = ex.submit(bad)
        with pytest.raises(ValueError, match="future boom"):
            fbad.result(timeout=60)


# --- pipelining: calls sent ahead to the worker making their inputs ------------------------------------------


def warm_up(m, name, n=6):
    """Short calls measured: the library may now take calls ahead of their inputs."""
    for i in range(n):
        m.submit(vine.FunctionCall(name, "add", i, 1))
    drain(m, 60)


def test_pipelined_chain_stops_at_a_failure(manager, start_worker):
    start_worker(manager, cores=1)
    install(manager, "pipe-fail")
    warm_up(manager, "pipe-fail")
    a = temp_call("pipe-fail", "add", 1, 1)
    b = temp_call("pipe-fail", "explode", a)  # raises: makes no temp
    c = temp_call("pipe-fail", "add", b, 1)
    d = vine.FunctionCall("pipe-fail", "add", c, 1)
    for t in (a, b, c, d):
        manager.submit(t)
    drain(manager, 60)
    assert a.output == 2
    assert (b.exit_code, type(b.output)) == (1, ValueError)
    assert (c.result, d.result) == ("input missing", "input missing")


@pytest.mark.timeout(120)
def test_worker_killed_mid_pipelined_chain_loses_nothing(manager, start_worker, tmp_path):
    holder = start_worker(manager, cores=1)
    install(manager, "pipe-kill")
    warm_up(manager, "pipe-kill")
    mark = tmp_path / "mark"
    n = 40
    prev = None
    calls = []
    for i in range(n):
        c = vine.FunctionCall("pipe-kill", "step", prev if prev is not None else 0, 0.02, str(mark), 15)
        if i < n - 1:
            c.enable_temp_output()
        manager.submit(c)
        calls.append(c)
        prev = c
    wait_until(mark.exists, 60, "the chain to reach link 15")
    start_worker(manager, cores=1)
    holder.kill(signal.SIGKILL)
    last = manager.wait_for_task_id(calls[-1].id, 90)
    assert last is not None, "the chain did not finish after its worker was killed"
    assert (last.result, last.exit_code, last.output) == ("success", 0, n)
    drain(manager, 60)
    assert all(c.result == "success" for c in calls)
