"""What a worker is told to run: the manager's parts of a task's definition.

A task's own part (command, environment, inputs, limits, its Python run or function call) is
``Task._task_spec``; the manager adds what it decides when it sends the task: the id it runs under,
the allocation, the outputs it expects back, the stdout limit, queueing, monitoring, the library
instance (``WorkerLinks.send_message``'s Dispatch branch, core/manager/links.py) or the library
start (``ManagerLibraries.start_message``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..wire import messages as M

if TYPE_CHECKING:
    from ..api.task import Task
    from ..state.spec import MinitaskSpec


def output_refs(task: Task) -> tuple[M.OutputRef, ...]:
    """The outputs of ``task`` as the worker is told of them; file and buffer outputs are sent back."""
    return tuple([M.OutputRef(m.file.cache_name, m.remote_name, m.file.level, m.file.kind, m.file.kind in ("file", "buffer"),
                              m.watch, m.failure_only, m.success_only) for m in task.outputs])


def monitor_options(monitoring: dict[str, Any]) -> M.MonitorOptions:
    """The manager's monitoring setting (``enable_monitoring``) as sent with each task."""
    return M.MonitorOptions(bool(monitoring.get("watchdog")), float(monitoring.get("interval") or 1.0))


def minitask_definition(minitask: MinitaskSpec) -> M.MinitaskDefinition:
    """The definition of the mini-task that makes a file: its command, environment and inputs."""
    inputs = tuple([M.InputRef(m.file.cache_name, m.remote_name, m.file.level, m.file.kind, m.file.mode) for m in minitask.inputs])
    return M.MinitaskDefinition(minitask.command, minitask.output, inputs, dict(minitask.env))
