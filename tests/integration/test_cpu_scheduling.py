"""The worker's CPU scheduling policy (``--cpu-scheduling``, core/worker/options.py
``set_cpu_scheduling``): by default the worker, its command tasks, its PythonTasks and its
libraries' forked calls all run under Linux ``SCHED_BATCH``; ``normal`` leaves the policy the
worker was started with. Read from real processes: the worker's own, and what each task reports.
"""

from __future__ import annotations

import os
import sys

import pytest

import core as vine
from core.worker.options import build_parser
from tests.conftest import run, wait_for_workers

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies")]

POLICY = f"{sys.executable} -c 'import os; print(os.sched_getscheduler(0))'"


def policy_here(_: int = 0) -> int:
    import os

    return os.sched_getscheduler(0)


def _policies(manager) -> dict[str, int]:
    lib = manager.create_library_from_functions("sched", policy_here, exec_mode="fork")
    manager.install_library(lib)
    return {
        "command": int(run(manager, vine.Task(POLICY)).output.strip()),
        "python": run(manager, vine.PythonTask(policy_here)).output,
        "forked call": run(manager, vine.FunctionCall("sched", "policy_here", 1)).output,
    }


def test_a_worker_and_all_it_starts_run_under_sched_batch_by_default(manager, start_worker):
    w = start_worker(manager, cores=1)
    wait_for_workers(manager, 1)
    assert os.sched_getscheduler(w.proc.pid) == os.SCHED_BATCH
    assert _policies(manager) == {"command": os.SCHED_BATCH, "python": os.SCHED_BATCH, "forked call": os.SCHED_BATCH}
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the manager's process is the user's: left alone


def test_normal_leaves_the_policy_it_was_started_with(manager, start_worker):
    w = start_worker(manager, cores=1, extra=["--cpu-scheduling", "normal"])
    wait_for_workers(manager, 1)
    assert os.sched_getscheduler(w.proc.pid) == os.SCHED_OTHER
    assert _policies(manager) == {"command": os.SCHED_OTHER, "python": os.SCHED_OTHER, "forked call": os.SCHED_OTHER}


def test_an_unknown_policy_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cpu-scheduling", "fifo", "localhost", "9123"])
    assert "--cpu-scheduling" in capsys.readouterr().err


def test_a_refused_policy_is_a_warning_and_the_worker_goes_on(monkeypatch):
    from core.worker.options import set_cpu_scheduling

    def refuse(pid, policy, param):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    warning = set_cpu_scheduling("batch")
    assert warning is not None and "SCHED_BATCH" in warning and "not permitted" in warning
    assert set_cpu_scheduling("normal") is None  # not even tried
