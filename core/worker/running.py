"""A task as the worker runs it: :class:`RunningTask`, shared by the worker's parts.

The worker (``main``), its sandboxes, transfers (mini-tasks) and Python runner all handle running
tasks; the record lives here, below all of them, so none imports another for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ..wire.messages import TaskDefinition
from .monitor import Usage


@dataclass(slots=True, eq=False)
class RunningTask:
    """One task (or mini-task, or library instance) on this worker, from its message to its ``complete``."""

    id: int
    spec: TaskDefinition  # what the manager sent (frozen: what changes while it runs is below)
    sandbox: str  # its directory ("" until made; a direct-mode call never gets one)
    alloc: dict[str, float]  # the resources the manager allocated it
    pid: int = 0
    returncode: int | None = None
    stdout_fd: int = -1
    stdout_size: int = -1  # bytes the task wrote to stdout (-1: not read)
    done: asyncio.Future[int] | None = None
    killed_for: int | None = None
    start: float = 0.0
    starter: asyncio.Task[None] | None = None
    watchers: dict[str, int] = field(default_factory=dict)
    usage: Usage | None = None  # peaks measured when the manager enabled monitoring
    limits: dict[str, float] = field(default_factory=dict)  # what the watchdog found exceeded
    is_minitask: bool = False
    linked: list[str] = field(default_factory=list)  # cache entries the sandbox reaches (checked after the task)
    # Set by the Python runner (core/worker/python.py):
    inline_stdout: bytes | None = None  # a call's result that came back from its library in memory (its "stdout")
    inline_outputs: dict[str, bytes] = field(default_factory=dict)  # remote name -> bytes a forked PythonTask sent back
    retry: bool = False  # never started (its library died first): the manager sends it again without counting a try
    fallback_command: str | None = None  # a PythonTask run as a command: the fork server is gone (core/worker/python.py)
    # Set for a library instance (core/worker/python.py): its socket and slots, over the definition's env.
    extra_env: dict[str, str | None] | None = None
