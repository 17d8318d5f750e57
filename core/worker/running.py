"""A task as the worker runs it: :class:`RunningTask`, shared by the worker's parts, and its stdout.

The worker (``main``), its sandboxes, transfers (mini-tasks) and Python runner all handle running
tasks; the record lives here, below all of them, so none imports another for it.

A task's stdout and stderr go to ``.vine-stdout`` in its sandbox. The worker opens that file before
a command starts (the shell inherits it), or reuses the descriptor it kept of the empty one a
recycled sandbox holds; a forked PythonTask's child creates it itself, so the
worker only looks at it at the end (``RunningTask.stdout_at``) and opens it only if it is not empty:
most small tasks print nothing, and an open, fstat and close per task were a measurable part of the
worker's time. Up to ``STDOUT_INLINE`` bytes travel inside the ``complete`` (:func:`take_stdout`);
more (up to the manager's ``stdout_limit``) are streamed ahead of it. A forked PythonTask's small
result may travel in the same ``complete``, ahead of the stdout (``RunningTask.complete_result``).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..wire import messages as M
from ..wire.messages import TaskDefinition
from ..wire.protocol import CHUNK_SIZE
from .monitor import Usage

if TYPE_CHECKING:
    from ..wire.connection import Connection

STDOUT_LIMIT = 32 << 20  # a task's stdout kept when the manager does not say (it sends max-task-stdout-storage)
STDOUT_INLINE = 4 << 20  # up to this much travels in the task's complete message; more is streamed before it


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
    stdout_at: str = ""  # its stdout file when the worker did not open it (a forked PythonTask's child makes it)
    stdout_size: int = -1  # bytes the task wrote to stdout (-1: not read)
    done: asyncio.Future[int] | None = None
    killed_for: int | None = None
    start: float = 0.0
    starter: asyncio.Future[Any] | None = None  # the coroutine running it, or its shell's start by a spawner thread
    timers: list[asyncio.TimerHandle] | None = None  # its time limits, when it runs without a coroutine (commands.py)
    watchers: dict[str, int] = field(default_factory=dict)
    usage: Usage | None = None  # peaks measured when the manager enabled monitoring
    limits: dict[str, float] = field(default_factory=dict)  # what the watchdog found exceeded
    is_minitask: bool = False
    linked: list[str] = field(default_factory=list)  # cache entries the sandbox reaches (checked after the task)
    # Set by the Python runner (core/worker/python.py):
    inline_stdout: bytes | None = None  # a call's result that came back from its library in memory (its "stdout")
    inline_outputs: dict[str, bytes] = field(default_factory=dict)  # remote name -> bytes a forked PythonTask sent back
    # (cache name, bytes) of a small sent-back result that travels inside the task's complete, the
    # stdout after it (PythonRun.result_in_complete): one frame, not a stream of three before it.
    complete_result: tuple[str, bytes] | None = None
    retry: bool = False  # never started (its library died first): the manager sends it again without counting a try
    fallback_command: str | None = None  # a PythonTask run as a command: the fork server is gone (core/worker/python.py)
    # Set for a library instance (core/worker/python.py): its socket and slots, over the definition's env.
    extra_env: dict[str, str | None] | None = None


def stdout_now(rt: RunningTask, conn: Connection | None) -> tuple[bytes, bool] | None:
    """The task's captured output when it fits in the ``complete`` (bytes to send inline, whether it
    was cut at the manager's ``stdout_limit``), or None when it must be streamed ahead of it
    (:func:`take_stdout` does that; the file stays the task's until then). The worker's descriptor
    of an empty stdout file stays open in ``rt.stdout_fd``: the sandbox's cleanup keeps it for the
    sandbox's next task or closes it (core/worker/sandbox.py)."""
    inline, rt.inline_stdout = rt.inline_stdout, None
    if inline is not None:
        return inline, False
    fd = _take_fd(rt)
    if fd < 0:
        return b"", False
    limit = STDOUT_LIMIT if rt.spec.stdout_limit is None else rt.spec.stdout_limit
    try:
        size = rt.stdout_size = os.fstat(fd).st_size
        if not size:  # (only the worker's own descriptor can be of an empty file: see _take_fd)
            rt.stdout_fd, fd = fd, -1  # left open: the recycled sandbox keeps it for its next task (sandbox.py)
            return b"", False
        keep = min(size, limit)
        if keep > STDOUT_INLINE and conn is not None:
            rt.stdout_fd, fd = fd, -1  # too big for one frame: left for take_stdout to stream
            return None
        keep = min(keep, STDOUT_INLINE)
        return (os.pread(fd, keep, 0) if keep else b""), size > keep
    finally:
        if fd >= 0:
            os.close(fd)


async def take_stdout(rt: RunningTask, conn: Connection | None) -> tuple[bytes, bool, int | None]:
    """The task's captured output, up to the manager's ``stdout_limit`` (tune max-task-stdout-storage):
    (bytes to send inline, whether it was cut, bytes streamed ahead of ``complete`` or None)."""
    now = stdout_now(rt, conn)
    if now is not None:
        return now[0], now[1], None
    assert conn is not None
    fd = _take_fd(rt)
    try:
        size = rt.stdout_size
        keep = min(size, STDOUT_LIMIT if rt.spec.stdout_limit is None else rt.spec.stdout_limit)
        # Too big for one frame: streamed in chunks, read from the file as they go (never held whole).
        name = f".stdout.{rt.id}"
        conn.send(M.FileBegin(name, keep, task=rt.id, stdout=True))
        piece = M.FileChunk(name)
        for offset in range(0, keep, CHUNK_SIZE):
            conn.send(piece, os.pread(fd, min(CHUNK_SIZE, keep - offset), offset))
            await conn.drain()
        conn.send(M.FileEnd(name))
        return b"", size > keep, keep
    finally:
        os.close(fd)


def read_stdout(rt: RunningTask) -> tuple[bytes, bool]:
    """The task's captured output (at most STDOUT_LIMIT bytes) and whether it was cut, for callers
    that send it inline only (a library's)."""
    inline, rt.inline_stdout = rt.inline_stdout, None
    if inline is not None:
        return inline, False
    fd = _take_fd(rt)
    if fd < 0:
        return b"", False
    try:
        size = rt.stdout_size = os.fstat(fd).st_size
        return (os.pread(fd, min(size, STDOUT_LIMIT), 0) if size else b""), size > STDOUT_LIMIT
    finally:
        os.close(fd)


def close_stdout(rt: RunningTask) -> None:
    """Close the worker's descriptor of the task's stdout file, if it holds one (a task killed by the
    manager, or one whose shell never started, is never read)."""
    fd, rt.stdout_fd = rt.stdout_fd, -1
    if fd >= 0:
        os.close(fd)


def _take_fd(rt: RunningTask) -> int:
    """The task's stdout file, open for reading and now the caller's to close; -1 when there is
    nothing to read (then ``rt.stdout_size`` is 0 for a file the task's process made itself)."""
    fd, rt.stdout_fd = rt.stdout_fd, -1
    if fd >= 0 or not rt.stdout_at:
        return fd
    path, rt.stdout_at = rt.stdout_at, ""
    try:
        if os.stat(path).st_size:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        pass  # the process never started, or wrote nothing and never opened it
    rt.stdout_size = 0
    return -1
