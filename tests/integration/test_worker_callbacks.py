"""The worker's callback paths: what arrives is handled in the read that brings it, not by a coroutine.

Three channels are read by callbacks: the manager's connection (Connection.deliver_frames), each
library instance's socket (core/worker/python.py LibraryChannel) and the fork server's channel,
whose replies now start and end a plain PythonTask (PythonRunner.start_forked) without the
coroutines of the ordinary path. These tests check the edges of those paths with real processes:
a task killed while its process runs, a fork server killed under a running task, a library that
writes garbage on its socket. In every case the task ends with a result that says what happened,
no process is left behind, and the worker goes on serving.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
import time

import cloudpickle
import pytest

import core as vine
from tests.conftest import children_running, drain, process_gone, run, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nap_with_pid(marker, seconds):
    with open(marker + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    time.sleep(seconds)
    return "woke"


def double(x):
    return 2 * x


def scribble_on_the_library_socket():
    """Run inside a direct-mode library: write bytes that are not the socket's framing to the worker."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not stat.S_ISSOCK(os.fstat(int(fd)).st_mode):
                continue
            s = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        try:
            if s.family == socket.AF_UNIX:
                s.sendall(b"\xff" * 64)
        finally:
            s.close()
    time.sleep(3)  # meanwhile the worker drops this instance (the process ends once it finds its socket closed)
    return "not reported"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _read_pid(marker: str) -> int:
    wait_until(lambda: os.path.exists(marker), 30, "the task to start")
    with open(marker) as fh:
        return int(fh.read())


@pytest.mark.timeout(90)
def test_a_python_task_cancelled_while_it_runs_has_its_process_killed(manager, start_worker, tmp_path):
    start_worker(manager, cores=1)
    warm = run(manager, vine.PythonTask(double, 1))  # the fork server runs: the next task takes the callback path
    assert warm.result == "success" and warm.output == 2
    marker = str(tmp_path / "pid")
    doomed = vine.PythonTask(nap_with_pid, marker, 60)
    manager.submit(doomed)
    pid = _read_pid(marker)
    manager.cancel_by_task_id(doomed.id)
    wait_until(lambda: _pid_gone(pid), 30, "the cancelled task's process to end")
    t = manager.wait_for_task_id(doomed.id, 30)
    assert t is not None and t.result == "cancelled"
    after = run(manager, vine.PythonTask(double, 21))
    assert after.result == "success" and after.output == 42


@pytest.mark.timeout(120)
def test_a_fork_server_killed_under_a_running_task_ends_it_and_the_next_tasks_run(manager, start_worker, tmp_path):
    w = start_worker(manager, cores=1)
    assert run(manager, vine.PythonTask(double, 1)).output == 2
    marker = str(tmp_path / "pid")
    victim = vine.PythonTask(nap_with_pid, marker, 60)
    victim.set_retries(1)  # the task's own try, no second: what it ends with is the loss of its server
    manager.submit(victim)
    child = _read_pid(marker)
    servers = children_running(w.pid, "core.worker.forkserver")
    assert len(servers) == 1
    servers[0].send_signal(signal.SIGKILL)
    wait_until(lambda: process_gone(servers[0]), 30, "the fork server to end")
    t = manager.wait_for_task_id(victim.id, 60)
    assert t is not None and t.result == "signal", (t.result if t else None)  # its process's end went with the server
    os.kill(child, signal.SIGKILL)  # its server is gone: nothing else would end the orphan before its sleep does
    again = [vine.PythonTask(double, i) for i in range(4)]
    for task in again:
        manager.submit(task)
    drain(manager, 60)
    assert [task.output for task in again] == [0, 2, 4, 6], [(task.result, task.output) for task in again]


@pytest.mark.timeout(120)
def test_a_library_writing_garbage_on_its_socket_is_dropped_and_the_worker_serves_on(manager, start_worker):
    start_worker(manager, cores=1)
    lib = manager.create_library_from_functions("scribbler", scribble_on_the_library_socket, double, exec_mode="direct")
    lib.set_function_slots(1)
    manager.install_library(lib)
    assert run(manager, vine.FunctionCall("scribbler", "double", 4)).output == 8  # the instance is ready
    bad = vine.FunctionCall("scribbler", "scribble_on_the_library_socket")
    bad.set_retries(1)
    t = run(manager, bad, 90)
    assert t.result == "library exit", t.result  # the instance was dropped under the call
    after = run(manager, vine.FunctionCall("scribbler", "double", 5), 90)  # a new instance
    assert after.result == "success" and after.output == 10
    assert manager.stats.libraries_started >= 2
