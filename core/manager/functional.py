"""Blocking functional helpers on the Manager: ``map``, ``pair``, ``tree_reduce`` (REFERENCE §1.7).

Each submits PythonTasks over chunks of its input, waits for exactly those tasks (other tasks of the
program stay in the manager for its own ``wait``), and returns the values in input order. If a chunk's
function raised, that exception is raised here (with the remote traceback as its ``__cause__``)
and the helper's other tasks are cancelled. ``tree_reduce`` keeps intermediate values on the
workers as temp files; only the final value comes back.

Plain functions over what a manager offers (:class:`TaskRunner`); ``Manager.map`` and the others
call them with the manager itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ..api.python_task import PythonTask, PythonTaskNoResult

if TYPE_CHECKING:
    from ..api.files import File
    from ..api.task import Task


class TaskRunner(Protocol):
    """What the helpers need of a manager: submitting, waiting for some tasks only, cancelling."""

    def submit(self, task: Task) -> int: ...
    def cancel_by_task_id(self, task_id: int) -> bool: ...
    def _wait_for(self, match: Callable[[Task], bool], timeout: Any) -> Task | None: ...


def _apply_each(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    return [fn(x) for x in chunk]


def _chunks(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def _check_chunksize(chunksize: Any, minimum: int = 1) -> int:
    size = int(chunksize)
    if size < minimum:
        raise ValueError(f"chunksize must be at least {minimum}, got {chunksize!r}")
    return size


def _run_tasks(m: TaskRunner, tasks: list[PythonTask], fetch: list[PythonTask] | None = None) -> list[Any]:
    """Submit ``tasks``, wait for all of them; the outputs of ``fetch`` (default: all), in order."""
    pending: set[int] = set()
    try:
        for t in tasks:
            pending.add(m.submit(t))
        while pending:
            done = m._wait_for(lambda t: t.id in pending, None)
            if done is None:
                raise RuntimeError("the manager closed before the helper's tasks finished")
            pending.discard(done.id)
            if done.result != "success" or done.exit_code != 0:
                value = done.output
                if isinstance(value, BaseException):
                    raise value
                raise PythonTaskNoResult(f"task {done.id} ended with '{done.result}'")
    finally:
        for tid in pending:
            m.cancel_by_task_id(tid)
        while pending:  # collect the cancelled ones so they do not linger for the user's wait()
            done = m._wait_for(lambda t: t.id in pending, 30)
            if done is None:
                break
            pending.discard(done.id)
    out = []
    for t in fetch if fetch is not None else tasks:
        value = t.output
        if isinstance(value, BaseException):
            raise value
        out.append(value)
    return out

def map_tasks(m: TaskRunner, fn: Callable[[Any], Any], seq: Iterable[Any], chunksize: int = 1) -> list[Any]:
    """``[fn(x) for x in seq]``, one PythonTask per ``chunksize`` items."""
    items = list(seq)
    size = _check_chunksize(chunksize)
    tasks = [PythonTask(_apply_each, fn, chunk) for chunk in _chunks(items, size)]
    return [v for chunk in _run_tasks(m, tasks) for v in chunk]

def pair_tasks(m: TaskRunner, fn: Callable[[tuple[Any, Any]], Any], seq1: Iterable[Any], seq2: Iterable[Any],
               chunksize: int = 1, env: File | None = None) -> list[Any]:
    """``[fn((a, b)) for a, b in itertools.product(seq1, seq2)]``: ``fn`` gets one tuple; ``env``: the
    environment File each task runs in."""
    pairs = list(itertools.product(list(seq1), list(seq2)))
    size = _check_chunksize(chunksize)
    tasks = []
    for chunk in _chunks(pairs, size):
        t = PythonTask(_apply_each, fn, chunk)
        if env is not None:
            t.add_environment(env)
        tasks.append(t)
    return [v for chunk in _run_tasks(m, tasks) for v in chunk]

def tree_reduce_tasks(m: TaskRunner, fn: Callable[[list[Any]], Any], seq: Iterable[Any], chunksize: int = 2) -> Any:
    """Reduce ``seq`` by calling ``fn`` on lists of up to ``chunksize`` items, layer by layer.

    A single item is returned as it is; an empty ``seq`` is a ValueError.
    """
    layer: list[Any] = list(seq)
    size = _check_chunksize(chunksize, 2)
    if not layer:
        raise ValueError("tree_reduce of an empty sequence")
    if len(layer) == 1:
        return layer[0]
    tasks: list[PythonTask] = []
    submitted: list[PythonTask] = []
    # Build every layer up front; intermediate values stay on workers as temps.
    for _ in range(math.ceil(math.log(len(layer), size)) + 1):
        if len(layer) == 1:
            break
        next_layer = []
        for chunk in _chunks(layer, size):
            t = PythonTask(fn, chunk)
            t.enable_temp_output()
            next_layer.append(t)
            tasks.append(t)
        layer = next_layer
        # Later layers take these tasks as arguments, which needs their temp files declared: submit now.
        for t in next_layer:
            m.submit(t)
            submitted.append(t)
    return _collect_submitted(m, submitted, layer[0])

def _collect_submitted(m: TaskRunner, tasks: list[PythonTask], last: PythonTask) -> Any:
    pending = {t.id for t in tasks}
    failure: BaseException | None = None
    while pending:
        done = m._wait_for(lambda t: t.id in pending, None)
        if done is None:
            raise RuntimeError("the manager closed before tree_reduce finished")
        pending.discard(done.id)
        if failure is None and (done.result != "success" or done.exit_code != 0) and done.result != "cancelled":
            value = done.output
            failure = value if isinstance(value, BaseException) else PythonTaskNoResult(f"task {done.id} ended with '{done.result}'")
            for tid in pending:
                m.cancel_by_task_id(tid)
    if failure is not None:
        raise failure
    value = last.output
    if isinstance(value, BaseException):
        raise value
    return value
