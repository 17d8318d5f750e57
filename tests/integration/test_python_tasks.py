"""PythonTask end to end: values, remote exceptions, temp chains, raw output, environments, helpers."""

from __future__ import annotations

import os
import stat
import sys
import tarfile

import cloudpickle
import pytest

import core as vine
from core.api.python_task import RemoteTraceback
from core.errors import TaskError
from tests.conftest import drain, run

# Ship this module's functions by value: a fork-server child then need not import the test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --- functions run on workers ---------------------------------------------------------------------


def add(x, y=0, *, z=0):
    return x + y + z


def describe():
    import os as _os

    return {"pid": _os.getpid(), "cwd": _os.getcwd(), "cores": _os.environ.get("CORES"), "tmp": _os.environ.get("TMPDIR")}


def fail_deep(n):
    def inner(k):
        if k == 0:
            raise ValueError(f"bad value {n}")
        return inner(k - 1)

    return inner(2)


def raw(n):
    return b"x" * n


def exit_with(code):
    sys.exit(code)


def sleep_for(seconds):
    import time

    time.sleep(seconds)
    return seconds


_COUNTER = []


def bump():
    _COUNTER.append(1)
    return len(_COUNTER)


def square(x):
    return x * x


def total(items):
    return sum(items)


def env_var(name):
    return os.environ.get(name)


def not_a_callable_in_raw_mode():
    return {"a": 1}


def unpicklable_result():
    import threading

    return threading.Lock()


# --- values and exceptions ----------------------------------------------------------------------------


def test_return_values_and_sandbox(manager, start_worker):
    start_worker(manager, cores=2)
    tasks = [vine.PythonTask(add, i, y=10, z=100) for i in range(6)]
    for t in tasks:
        t.set_cores(1)
        manager.submit(t)
    probe = vine.PythonTask(describe)
    probe.set_cores(1)
    manager.submit(probe)
    done = drain(manager, 60)
    assert len(done) == 7
    assert sorted(t.output for t in tasks) == [110 + i for i in range(6)]
    assert all(t.result == "success" and t.exit_code == 0 and t.successful() for t in done)
    info = probe.output
    assert info["pid"] != os.getpid()
    assert "/sandbox/" in info["cwd"]
    assert info["cores"] == "1"
    assert info["tmp"].startswith(info["cwd"]) or info["tmp"].startswith(os.path.realpath(info["cwd"]))


def test_exception_with_remote_traceback(manager, start_worker):
    start_worker(manager, cores=1)
    t = run(manager, vine.PythonTask(fail_deep, 7))
    assert t.result == "success" and t.exit_code == 1 and not t.successful()
    exc = t.output
    assert isinstance(exc, ValueError) and str(exc) == "bad value 7"
    assert t.output is exc  # decoded once
    assert "in inner" in exc.__vine_traceback__ and "fail_deep" in exc.__vine_traceback__
    assert isinstance(exc.__cause__, RemoteTraceback) and "bad value 7" in str(exc.__cause__)
    assert "ValueError: bad value 7" in t.std_output  # the traceback is printed in the task's output too


def test_no_result_when_not_python_failure(manager, start_worker):
    start_worker(manager, cores=2)
    slow = vine.PythonTask(sleep_for, 60)
    slow.set_time_max(1)
    slow.set_cores(1)
    quits = vine.PythonTask(exit_with, 3)
    quits.set_cores(1)
    manager.submit(slow)
    manager.submit(quits)
    drain(manager, 60)
    assert slow.result == "max wall time"
    assert isinstance(slow.output, vine.PythonTaskNoResult) and "max wall time" in str(slow.output)
    assert quits.result == "output missing" and quits.exit_code == 3
    assert isinstance(quits.output, vine.PythonTaskNoResult)


def test_unpicklable_things(manager, start_worker):
    start_worker(manager, cores=1)
    import threading

    lock = threading.Lock()
    with pytest.raises(TaskError, match="cannot serialize"):
        manager.submit(vine.PythonTask(add, lock))
    assert manager.empty()
    t = run(manager, vine.PythonTask(unpicklable_result))
    assert isinstance(t.output, RuntimeError) and "cannot be pickled" in str(t.output)


def test_each_task_is_a_fresh_process(manager, start_worker):
    start_worker(manager, cores=1)
    first = run(manager, vine.PythonTask(bump))
    second = run(manager, vine.PythonTask(bump))
    assert first.output == second.output == 1  # a module global changed in one task is not seen by the next
    assert first.output is not None and _COUNTER == []


# --- outputs ----------------------------------------------------------------------------------------------


def test_temp_outputs_chain_between_tasks(manager, start_worker):
    start_worker(manager, cores=1)
    a = vine.PythonTask(add, 1, 2)
    a.enable_temp_output()
    manager.submit(a)
    b = vine.PythonTask(add, a, y=a)  # the same temp twice: one input, two references
    b.enable_temp_output()
    manager.submit(b)
    c = vine.PythonTask(total, [a, b, 10])  # futures nested inside a list
    manager.submit(c)
    drain(manager, 60)
    assert a.output_file.kind == "temp" and b.output_file.kind == "temp"
    assert c.output == 3 + 6 + 10
    assert (a.output, b.output) == (3, 6)  # temps are fetched from the worker when asked for
    assert manager.stats.tasks_done == 3


def test_failure_propagates_through_a_temp(manager, start_worker):
    start_worker(manager, cores=1)
    a = vine.PythonTask(fail_deep, 1)
    a.enable_temp_output()
    manager.submit(a)
    b = vine.PythonTask(add, a, 1)
    manager.submit(b)
    drain(manager, 60)
    assert isinstance(b.output, ValueError) and str(b.output) == "bad value 1"


def test_raw_output_and_cache(manager, start_worker):
    start_worker(manager, cores=1)
    t = vine.PythonTask(raw, 5)
    t.disable_output_serialization()
    t.set_output_cache(True)
    run(manager, t)
    assert t.output == b"xxxxx"
    bad = vine.PythonTask(not_a_callable_in_raw_mode)
    bad.disable_output_serialization()
    run(manager, bad)
    assert bad.exit_code == 1 and isinstance(bad.output, vine.PythonTaskNoResult)
    assert "must return bytes or str" in bad.std_output


# --- environments ---------------------------------------------------------------------------------------------


def make_env_tarball(tmp_path, value: str) -> str:
    """A poncho-like tarball: bin/run_in_env sets VINE_TEST_ENV and puts this venv's python first."""
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    script = root / "bin" / "run_in_env"
    script.write_text(
        "#!/bin/sh\n"
        f"export VINE_TEST_ENV={value}\n"
        f"export PATH={os.path.dirname(sys.executable)}:$PATH\n"
        'exec /bin/sh -c "$1"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    tarball = tmp_path / "env.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname=".")
    return str(tarball)


def test_environment_tarball(manager, start_worker, tmp_path):
    start_worker(manager, cores=2)
    env = manager.declare_poncho(manager.declare_file(make_env_tarball(tmp_path, "from-the-env"), cache=True), cache=True)
    shell = vine.Task("echo value=$VINE_TEST_ENV")
    shell.add_environment(env)
    shell.set_cores(1)
    py = vine.PythonTask(env_var, "VINE_TEST_ENV")  # runs `python3` fresh inside the environment
    py.add_environment(env)
    py.set_cores(1)
    plain = vine.PythonTask(env_var, "VINE_TEST_ENV")  # fork server: the worker's own environment
    plain.set_cores(1)
    for t in (shell, py, plain):
        manager.submit(t)
    drain(manager, 60)
    assert shell.output == "value=from-the-env\n"
    assert py.result == "success", py.std_output
    assert py.output == "from-the-env"
    assert plain.output is None


# --- Manager.map / pair / tree_reduce --------------------------------------------------------------------------


def test_map_pair_tree_reduce_odd_chunks(manager, start_worker):
    start_worker(manager, cores=2)
    assert manager.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
    assert manager.map(square, [], chunksize=2) == []
    assert manager.pair(total, [1, 2, 3], [10, 20], chunksize=4) == [a + b for a in (1, 2, 3) for b in (10, 20)]
    assert manager.tree_reduce(total, range(11), chunksize=3) == sum(range(11))
    assert manager.tree_reduce(total, [5], chunksize=2) == 5
    with pytest.raises(ValueError):
        manager.tree_reduce(total, [], chunksize=2)
    with pytest.raises(ValueError):
        manager.map(square, [1], chunksize=0)
    assert manager.empty()


def test_map_raises_the_remote_exception(manager, start_worker):
    start_worker(manager, cores=1)
    other = manager.submit(vine.Task("echo mine"))
    with pytest.raises(ValueError, match="bad value") as info:
        manager.map(fail_deep, [1, 2, 3], chunksize=2)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    t = manager.wait(30)  # the user's own task was left for the user
    assert t is not None and t.id == other
    assert manager.empty()
