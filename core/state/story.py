"""What happened to each task, and the rule of which state may follow which.

Every change of a task's state goes through :meth:`TaskStory.record`, which checks it against the
transition table (:data:`core.state.records.TRANSITIONS`) and appends it to one bounded log shared
by all tasks, as dask's worker state machine keeps its ``log``. :meth:`TaskStory.story` replays a
task's entries from it: which event (by name and id) moved it from which state to which, and when.
A transition the table does not allow is kept aside; ``SchedulerState.validate`` fails on it.

The log is bounded (``STORY_LENGTH`` entries for the whole state), so a long run keeps the recent
history of every task at a constant cost in memory, whatever the number of tasks.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from .records import TRANSITIONS

STORY_LENGTH = 20_000  # transitions kept, for all tasks together (about 100 bytes each)
INVALID_KEPT = 100  # invalid transitions kept for validate() (there should be none)


class Transition(NamedTuple):
    """One step of a task's story."""

    task_id: int
    event: str  # the event's class name, or "schedule" for a scheduling pass
    event_id: int  # the event's id (for "schedule": the last event handled before the pass)
    start: str  # "new" for a record just made
    finish: str
    now: float


class TaskStory:
    """The bounded transition log and the invalid transitions seen."""

    def __init__(self, length: int | None = None) -> None:
        # Plain tuples in Transition's field order, made Transitions only when read (story()): a
        # plain tuple of numbers and strings is dropped from the cyclic collector's lists at its
        # first look, where a Transition stays tracked, and one more long-lived tracked object per
        # submit brings every full collection nearer in a burst of submits.
        self.log: deque[tuple[int, str, int, str, str, float]] = deque(maxlen=STORY_LENGTH if length is None else length)
        self.invalid: deque[Transition] = deque(maxlen=INVALID_KEPT)
        self.event = "none"  # what the scheduler is handling now (set by SchedulerState.handle)
        self.event_id = 0
        self.now = 0.0

    def record(self, task_id: int, start: str, finish: str) -> None:
        entry = (task_id, self.event, self.event_id, start, finish, self.now)
        self.log.append(entry)
        if (start, finish) not in TRANSITIONS:
            self.invalid.append(Transition._make(entry))

    def story(self, task_id: int) -> list[Transition]:
        """The transitions of ``task_id`` still in the log, oldest first."""
        return [Transition._make(t) for t in self.log if t[0] == task_id]
