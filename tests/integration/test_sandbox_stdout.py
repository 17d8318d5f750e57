"""A task's stdout is its own, however the worker reuses sandboxes and whoever creates the file.

A command's stdout file is opened (and truncated) by the worker before the shell starts; a forked
PythonTask's child creates it itself and the worker opens it only at the end, if it is not empty
(core/worker/running.py). Sandboxes are reused from task to task, command or Python alike, so these
tests run both kinds, printing and silent, through one single-core worker (one sandbox after
another) and check that no task ever sees another's output or loses its own.
"""

from __future__ import annotations

import sys

import cloudpickle
import pytest

import core as vine
from tests.conftest import run

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def loud(text):
    print(text)
    return len(text)


def quiet(x):
    return x


def loud_then_cwd_file(text):
    print(text)
    with open("left-behind.txt", "w") as fh:  # a sandbox left unclean is not reused as it is
        fh.write("x")
    return 0


@pytest.mark.timeout(120)
def test_stdout_of_mixed_tasks_in_reused_sandboxes(manager, start_worker):
    start_worker(manager, cores=1)
    steps = [
        (vine.Task("echo from-shell"), "from-shell\n"),
        (vine.PythonTask(quiet, 1), ""),
        (vine.PythonTask(loud, "p3"), "p3\n"),
        (vine.PythonTask(quiet, 2), ""),
        (vine.Task("true"), ""),
        (vine.PythonTask(loud, "p6"), "p6\n"),
        (vine.PythonTask(loud_then_cwd_file, "p7"), "p7\n"),
        (vine.PythonTask(quiet, 3), ""),
        (vine.Task("echo s9; ls"), "s9\n"),  # a fresh or cleaned sandbox: nothing from p7 in it
        (vine.PythonTask(loud, "p10" * 1000), "p10" * 1000 + "\n"),
        (vine.PythonTask(quiet, 4), ""),
    ]
    for task, expected in steps:
        task.set_cores(1)
        t = run(manager, task)
        assert t.successful(), (t, t.result)
        assert t.std_output == expected, (t, t.std_output[:200])


@pytest.mark.timeout(120)
def test_forked_task_stdout_past_the_inline_limit(manager, start_worker):
    """More than a complete carries inline: streamed ahead of it, then the next task prints nothing."""
    from core.worker.running import STDOUT_INLINE

    start_worker(manager, cores=1)
    big = "y" * (STDOUT_INLINE + 1000)
    t = run(manager, vine.PythonTask(loud, big))
    assert t.successful(), (t, t.result)
    assert t.std_output == big + "\n"
    t = run(manager, vine.PythonTask(quiet, 5))
    assert t.successful() and t.std_output == ""
