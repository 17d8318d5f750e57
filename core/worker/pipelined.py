"""The worker's side of task pipelining: a queued task waits for the temps tasks started here are making.

The manager may send a command task (or a PythonTask) to the worker still making its temp inputs,
before they exist (``task-pipelining``, core/state/pipelining.py): it arrives queued, like a
prefetched task, and must not start until they are made. :class:`LocalMakers` knows which temps the
tasks started on this worker are making; a queued task that needs one of them waits at the head of
the worker's first-in, first-out queue until its maker has ended (its outputs are in the cache by
then, or it did not make them and the task fails with ``input missing`` as for any lost temp).

The manager mirrors the worker's queue to know what is committed where, so this rule is the one it
applies too (core/state/prefetch.py :func:`inputs_being_made`): a maker is a started task that is
not a function call (calls run in their library and tell waiting calls through the cache's pending
futures instead), and it stops being one when the worker releases it: after its outputs were
collected, which is when its ``complete`` leaves for the manager.
"""

from __future__ import annotations

from ..state.prefetch import inputs_being_made
from ..wire import messages as M


class LocalMakers:
    """The temps being made by tasks started on this worker (cache name -> the task making it)."""

    def __init__(self) -> None:
        self._making: dict[str, int] = {}

    def started(self, spec: M.TaskDefinition) -> None:
        """Task ``spec`` has started here: its temp outputs are being made."""
        if spec.function_call is None:
            for o in spec.outputs:
                if o.kind == "temp":
                    self._making[o.name] = spec.id

    def ended(self, spec: M.TaskDefinition) -> bool:
        """Task ``spec`` was released (its outputs collected, or it was killed); True if it was
        making something, so a queued task waiting for it may start now."""
        making = self._making
        if not making:
            return False
        gone = False
        for o in spec.outputs:
            if o.kind == "temp" and making.get(o.name) == spec.id:
                del making[o.name]
                gone = True
        return gone

    def blocks(self, spec: M.TaskDefinition) -> bool:
        """Whether queued task ``spec`` must keep waiting: a task started here is making one of its inputs."""
        return bool(self._making) and inputs_being_made((i.name for i in spec.inputs), self._making)

    def clear(self) -> None:
        """The manager is gone and every task with it."""
        self._making.clear()

    def __len__(self) -> int:
        return len(self._making)
