"""The fork server starts with LD_BIND_NOW (its children then never run the dynamic linker's lazy
binding, a copy-on-write fault per first call of a C function) and drops it at once: a task and what it
runs see the environment they would see without it; a worker that has LD_BIND_NOW itself keeps it.
Also the result pipe at the sizes where the server reads it in more than one piece."""

from __future__ import annotations

import os
import subprocess
import sys

import cloudpickle
import pytest

import core as vine
from core.worker.forkserver import INLINE_RESULT_LIMIT
from tests.conftest import drain

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def bind_now_seen():
    """(in os.environ, in a command's environment, in the fork server's own start environment)"""
    shell = subprocess.run(["/bin/sh", "-c", 'printf %s "${LD_BIND_NOW-unset}"'], capture_output=True, text=True).stdout
    with open(f"/proc/{os.getppid()}/environ", "rb") as fh:  # the parent of a forked task: its fork server
        start = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
    return os.environ.get("LD_BIND_NOW", "unset"), shell, start.get(b"LD_BIND_NOW", b"unset").decode()


def sized(n):
    return bytes(range(256)) * (n // 256) + b"z" * (n % 256)


def run_one(manager, task):
    manager.submit(task)
    assert drain(manager, 60) == [task] and task.result == "success", (task.result, task.std_output)
    return task.output


@pytest.mark.timeout(60)
def test_the_server_binds_now_and_a_task_never_sees_it(manager, start_worker, monkeypatch):
    monkeypatch.delenv("LD_BIND_NOW", raising=False)
    start_worker(manager, cores=1)
    assert run_one(manager, vine.PythonTask(bind_now_seen)) == ("unset", "unset", "1")


@pytest.mark.timeout(60)
def test_a_workers_own_bind_now_stays_for_its_tasks(manager, start_worker, monkeypatch):
    monkeypatch.setenv("LD_BIND_NOW", "yes")
    start_worker(manager, cores=1)
    assert run_one(manager, vine.PythonTask(bind_now_seen)) == ("yes", "yes", "yes")


@pytest.mark.timeout(90)
def test_results_around_the_pipe_buffer_and_the_inline_limit_arrive_whole(manager, start_worker):
    start_worker(manager, cores=2)
    # 65,536 is a pipe's buffer on Linux: past it the server gets a result in several reads.
    sizes = [0, 1, 65_536 - 14, 65_536, 200_003, INLINE_RESULT_LIMIT - 20, INLINE_RESULT_LIMIT + 1]
    tasks = {vine.PythonTask(sized, n): n for n in sizes}
    for t in tasks:
        manager.submit(t)
    done = drain(manager, 80)
    assert sorted(tasks[t] for t in done) == sorted(sizes)
    for t in done:
        assert t.result == "success" and t.output == sized(tasks[t]), (tasks[t], t.result, t.std_output)
