"""The fork server's fast path for PythonTask: what it saves, and that nothing observable changes.

The fast path hands a task's function to the fork server by its cache file (unpickled once per
worker), its small arguments inside the task message, and its result back through the server's
channel. These tests check the saving itself (a function's module is imported once per worker, not
once per task) and the edges where the old file path still applies (big arguments, big results,
output serialization off, temp outputs, a worker's restart of its fork server).
"""

from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import pytest

import core as vine
from core.api.python_task import ARGS_NAME, INLINE_ARGS_LIMIT
from core.worker.forkserver import INLINE_RESULT_LIMIT
from tests.conftest import children_running, drain, process_gone, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])

IMPORT_LOG = "VINE_TEST_IMPORT_LOG"
# A module whose import leaves a line in the file named by $VINE_TEST_IMPORT_LOG: the test
# counts how many processes imported it.
MODULE_SOURCE = f'''
import os
with open(os.environ["{IMPORT_LOG}"], "a") as fh:
    fh.write(f"{{os.getpid()}}\\n")

def where(x):
    return (os.getpid(), x * 2)
'''


def echo(data):
    return data


def sized(n):
    print("printed by the task")
    return b"r" * n


def blow_up(n):
    raise KeyError(f"no key {n}")


def pid():
    return os.getpid()


def plus_one(x):
    return x + 1


def make_module(tmp_path, monkeypatch, name):
    """An importable module (by reference, as a user's own module would be) in a fresh directory."""
    pkg = tmp_path / "mods"
    pkg.mkdir()
    (pkg / f"{name}.py").write_text(MODULE_SOURCE)
    log = tmp_path / "imports.log"
    log.write_text("")
    monkeypatch.setenv(IMPORT_LOG, str(log))  # the worker (started after this) and its tasks see it
    monkeypatch.setenv("PYTHONPATH", str(pkg) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.syspath_prepend(str(pkg))
    return __import__(name), log


@pytest.mark.timeout(120)
def test_a_functions_module_is_imported_once_per_worker_not_per_task(manager, start_worker, tmp_path, monkeypatch):
    mod, log = make_module(tmp_path, monkeypatch, "vine_fastpath_mod")
    log.write_text("")  # forget our own import above
    start_worker(manager, cores=2)
    tasks = [vine.PythonTask(mod.where, i) for i in range(8)]
    for t in tasks:
        t.set_cores(1)
        manager.submit(t)
    done = drain(manager, 90)
    assert len(done) == 8 and all(t.result == "success" for t in done), [(t.result, t.std_output) for t in done]
    values = [t.output for t in tasks]
    assert [v[1] for v in values] == [2 * i for i in range(8)]
    assert len({v[0] for v in values}) == 8  # still a fresh process per task
    importers = log.read_text().split()
    # One import, by the fork server (before, every one of the 8 children imported it).
    assert len(importers) == 1, importers
    assert importers[0] not in {str(v[0]) for v in values}


def test_big_arguments_and_results_take_the_file_path(manager, start_worker):
    start_worker(manager, cores=1)
    big = os.urandom(INLINE_ARGS_LIMIT + 1000)
    t_args = vine.PythonTask(echo, big)
    t_result = vine.PythonTask(sized, INLINE_RESULT_LIMIT + 10)
    t_result.disable_output_serialization()
    t_small = vine.PythonTask(sized, 10)
    t_small.disable_output_serialization()
    for t in (t_args, t_result, t_small):
        manager.submit(t)
    drain(manager, 60)
    assert any(m.remote_name == ARGS_NAME for m in t_args.inputs)  # too big to travel in the message
    assert not any(m.remote_name == ARGS_NAME for m in t_small.inputs)
    assert t_args.output == big
    assert t_result.output == b"r" * (INLINE_RESULT_LIMIT + 10)
    assert t_small.output == b"r" * 10
    assert t_result.std_output == t_small.std_output == "printed by the task\n"


def test_exceptions_and_temp_chains_through_the_fast_path(manager, start_worker):
    start_worker(manager, cores=1)
    a = vine.PythonTask(plus_one, 1)
    a.enable_temp_output()
    manager.submit(a)
    b = vine.PythonTask(plus_one, a)
    b.enable_temp_output()
    manager.submit(b)
    c = vine.PythonTask(plus_one, b)
    manager.submit(c)
    bad = vine.PythonTask(blow_up, 7)
    manager.submit(bad)
    drain(manager, 60)
    assert c.output == 4
    assert b.output == 3  # a temp kept in the worker's memory, fetched on demand
    exc = bad.output
    assert isinstance(exc, KeyError) and "no key 7" in str(exc)
    assert "blow_up" in exc.__vine_traceback__ and bad.exit_code == 1
    assert "KeyError" in bad.std_output  # the traceback is also on the task's stderr


@pytest.mark.timeout(120)
def test_a_killed_fork_server_is_replaced_and_its_cache_rebuilt(manager, start_worker):
    w = start_worker(manager, cores=1)
    first = vine.PythonTask(pid)
    manager.submit(first)
    drain(manager, 60)
    servers = children_running(w.pid, "core.worker.forkserver")
    assert len(servers) == 1
    servers[0].send_signal(signal.SIGKILL)
    wait_until(lambda: process_gone(servers[0]), 30, "fork server gone")
    again = [vine.PythonTask(pid) for _ in range(3)]
    for t in again:
        manager.submit(t)
    drain(manager, 60)
    assert all(t.result == "success" and isinstance(t.output, int) for t in again), [(t.result, t.output) for t in again]
    assert len({t.output for t in again} | {first.output}) == 4


def test_a_function_with_a_big_closure_is_loaded_by_each_child(manager, start_worker):
    from core.worker.forkserver import FUNCTION_CACHE_FILE_MAX

    start_worker(manager, cores=1)
    blob = os.urandom(FUNCTION_CACHE_FILE_MAX + 4096)

    def size_and_tail(k):
        return len(blob), blob[-k:]

    tasks = [vine.PythonTask(size_and_tail, k) for k in (1, 5)]
    for t in tasks:
        manager.submit(t)
    drain(manager, 60)
    assert [t.output for t in tasks] == [(len(blob), blob[-1:]), (len(blob), blob[-5:])]
