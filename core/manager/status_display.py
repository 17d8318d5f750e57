"""A live status display of a running manager: ``Manager(status_display_interval=S)``.

::

    user thread: wait() / wait_for_tag() / wait_for_task_id() / empty()      close()
        │  at most every S seconds                                            │ once more
        ▼                                                                     ▼
    StatusDisplay.tick() ──► collect(): Manager stats + category means (in the I/O thread)
        │
        ├── Jupyter (an IPython kernel): an HTML table, replaced in place (display_id)
        └── elsewhere: one line on stderr, rewritten in place on a terminal, a plain line otherwise

The numbers are the manager's own counters, the ones :attr:`core.Manager.stats` reports
(``workers_connected``, ``tasks_waiting``, ``tasks_running``, ``tasks_done``, ``tasks_failed``,
``bytes_sent``, ``bytes_received``, ``bytes_peer``), and the mean execution time of each category's
successful tasks that the manager keeps for its slow-worker check. Nothing is counted twice.

The display is refreshed only where the user's program has handed control to the manager, never
from the manager's I/O thread: a program that never waits sees no refresh until ``close()``, and
the I/O thread never blocks on a notebook frontend or a slow terminal.
"""

from __future__ import annotations

import html
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("core.manager.status_display")

__all__ = ["StatusDisplay", "StatusSnapshot", "check_status_interval", "format_bytes"]

# How long a refresh may wait for the I/O thread's numbers before it is skipped: a display must
# never hold up the user's wait() behind a manager busy with a large scheduling pass.
COLLECT_TIMEOUT = 5.0

# The stats a snapshot reads, by the names Manager.stats gives them.
_COUNTERS = {
    "workers": "workers_connected",
    "waiting": "tasks_waiting",
    "running": "tasks_running",
    "done": "tasks_done",
    "failed": "tasks_failed",
    "bytes_sent": "bytes_sent",
    "bytes_received": "bytes_received",
    "bytes_peer": "bytes_peer",
}


def check_status_interval(value: Any) -> float | None:
    """``status_display_interval`` as seconds: None (no display) or a finite number > 0.

    Anything else (0, a negative number, NaN, infinity, a bool, a string) raises ValueError
    naming the value, before the manager opens its port.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # ValueError for a wrong type too: one except clause catches every value refused.
        raise ValueError(  # noqa: TRY004
            f"status_display_interval must be a number of seconds > 0, or None for no display; "
            f"got {value!r} ({type(value).__name__})")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"status_display_interval must be a finite number of seconds > 0, or None for no "
                         f"display; got {value!r}")
    return seconds


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a byte count short enough for one status line."""
    value = float(n)
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


@dataclass(frozen=True)
class StatusSnapshot:
    """What the display shows at one moment."""

    workers: int
    waiting: int
    running: int
    done: int
    failed: int
    bytes_sent: int
    bytes_received: int
    bytes_peer: int
    slowest_category: str | None  # None until a category has a successful task
    slowest_mean: float  # its mean execution time, seconds

    @classmethod
    def from_stats(cls, stats: Mapping[str, float], category_means: Mapping[str, float]) -> StatusSnapshot:
        """From the manager's stats (missing counters read as 0, as in Manager.stats) and the mean
        execution time of each category's successful tasks."""
        counts = {field: int(stats.get(name, 0) or 0) for field, name in _COUNTERS.items()}
        slowest = max(category_means.items(), key=lambda kv: (kv[1], kv[0]), default=None)
        return cls(**counts, slowest_category=slowest[0] if slowest else None,
                   slowest_mean=float(slowest[1]) if slowest else 0.0)

    def line(self, label: str) -> str:
        """The compact one-line form, e.g. ``vine :9123 | workers 2 | tasks waiting 5 running 2
        done 40 failed 0 | sent 1.2 MiB received 310.0 KiB peer 0 B | slowest analysis 2.31 s``."""
        slowest = f"{self.slowest_category} {self.slowest_mean:.2f} s" if self.slowest_category is not None else "-"
        return (f"{label} | workers {self.workers} | tasks waiting {self.waiting} running {self.running} "
                f"done {self.done} failed {self.failed} | sent {format_bytes(self.bytes_sent)} "
                f"received {format_bytes(self.bytes_received)} peer {format_bytes(self.bytes_peer)} "
                f"| slowest {slowest}")

    def html(self, label: str, final: bool) -> str:
        """The notebook form: a small table. Each value cell carries its exact number in
        ``data-stat`` / ``data-value`` so programs (and tests) can read the table back."""
        def row(name: str, stat: str, value: Any, shown: str | None = None) -> str:
            return (f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
                    f"<td style='text-align:right' data-stat='{stat}' data-value='{html.escape(str(value))}'>"
                    f"{html.escape(shown if shown is not None else str(value))}</td></tr>")

        slowest = (f"{self.slowest_category} ({self.slowest_mean:.2f} s mean)"
                   if self.slowest_category is not None else "none yet")
        rows = [
            row("workers connected", "workers", self.workers),
            row("tasks waiting", "waiting", self.waiting),
            row("tasks running", "running", self.running),
            row("tasks done", "done", self.done),
            row("tasks failed", "failed", self.failed),
            row("bytes sent", "bytes_sent", self.bytes_sent, format_bytes(self.bytes_sent)),
            row("bytes received", "bytes_received", self.bytes_received, format_bytes(self.bytes_received)),
            row("bytes peer-to-peer", "bytes_peer", self.bytes_peer, format_bytes(self.bytes_peer)),
            row("slowest category", "slowest_category", self.slowest_category or "", slowest),
        ]
        state = "closed" if final else "running"
        return (f"<table class='vine-status' data-state='{state}'>"
                f"<caption style='text-align:left'><b>{html.escape(label)}</b> ({state})</caption>"
                f"{''.join(rows)}</table>")


class _Rendering:
    """One refresh as IPython displays it: HTML for the notebook, the line for plain-text frontends."""

    def __init__(self, snapshot: StatusSnapshot, label: str, final: bool) -> None:
        self._html = snapshot.html(label, final)
        self._line = snapshot.line(label)

    def _repr_html_(self) -> str:
        return self._html

    def __repr__(self) -> str:
        return self._line


class _Output(Protocol):
    def show(self, snapshot: StatusSnapshot, final: bool) -> None: ...


class _NotebookOutput:
    """An HTML table in the notebook, replaced in place: the first refresh displays it with a
    display id, every later one (and the last, at close) updates that same output."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._handle: Any = None

    def show(self, snapshot: StatusSnapshot, final: bool) -> None:
        from IPython.display import display

        shown = _Rendering(snapshot, self._label, final)
        if self._handle is None:
            self._handle = display(shown, display_id=True)
        else:
            self._handle.update(shown)


class _TerminalOutput:
    """One line on stderr. On a terminal it is rewritten in place (carriage return, clear line)
    and ended with a newline at close; otherwise (a log file, a pipe) each refresh that changed
    something is a line of its own. ``sys.stderr`` is looked up at each write, so a program (or
    pytest) that replaces it is followed."""

    def __init__(self, label: str) -> None:
        self._label = label

    def show(self, snapshot: StatusSnapshot, final: bool) -> None:
        stream = sys.stderr
        if stream is None:  # pythonw, or a daemon that closed it: nowhere to show anything
            return
        line = snapshot.line(self._label)
        isatty = getattr(stream, "isatty", None)
        if isatty is not None and isatty():
            width = _terminal_columns(stream)
            if 0 < width <= len(line):  # a wrapped line cannot be rewritten with a carriage return
                line = line[: max(width - 2, 1)] + "…"
            stream.write("\r\x1b[2K" + line + ("\n" if final else ""))
        else:
            stream.write(line + "\n")
        stream.flush()


def _terminal_columns(stream: Any) -> int:
    """The width of the terminal ``stream`` writes to (0 if unknown: the line is not cut)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # no fileno (a wrapper), or not a terminal after all
        return 0


def in_notebook() -> bool:
    """True inside an IPython kernel with a frontend (Jupyter, VS Code, nbclient); False in a
    terminal IPython or plain Python. IPython is not imported if the program has not loaded it."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class StatusDisplay:
    """Shows a manager's status every ``interval`` seconds at most, in the form that suits where
    the program runs (see the module docstring). ``collect`` returns the manager's stats and its
    per-category mean execution times; ``notebook`` picks the form (None: detect it).

    Safe to tick from several threads (Parsl and the futures executor wait from their own): a tick
    that finds another thread refreshing returns at once.
    """

    def __init__(self, interval: float, collect: Callable[[], tuple[Mapping[str, float], Mapping[str, float]]],
                 label: str, notebook: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        checked = check_status_interval(interval)
        if checked is None:
            raise ValueError("StatusDisplay needs an interval in seconds; a manager without one has no display")
        self.interval = checked
        self._collect = collect
        self._clock = clock
        self.notebook = in_notebook() if notebook is None else bool(notebook)
        self._output: _Output = _NotebookOutput(label) if self.notebook else _TerminalOutput(label)
        self._lock = threading.Lock()
        self._next_due = clock()  # the first tick refreshes
        self._shown: StatusSnapshot | None = None
        self._finished = False
        self.refreshes = 0  # how many times something was shown

    @classmethod
    def for_manager(cls, manager: Any, interval: float) -> StatusDisplay:
        """The display of ``manager``, a :class:`core.Manager` (not imported: it imports this module).
        Its stats and category means are read together in its I/O thread, where they live: one
        round trip per refresh."""
        def collect() -> tuple[Mapping[str, float], Mapping[str, float]]:
            return manager._call(lambda: (manager._collect_stats(), manager._metrics.category_means(1)),
                                 timeout=COLLECT_TIMEOUT)
        label = f"vine {manager.name}" if manager.name else f"vine :{manager.port}"
        return cls(interval, collect, label)

    def seconds_until_due(self) -> float:
        """How long a waiting thread may sleep before the next refresh is due (0 if it is)."""
        return max(self._next_due - self._clock(), 0.0)

    def due(self) -> bool:
        return not self._finished and self._clock() >= self._next_due

    def wait_limit(self, remaining: float | None) -> float:
        """How long a thread waiting ``remaining`` seconds (None: forever) may sleep before the next
        refresh is due."""
        due_in = self.seconds_until_due() if not self._finished else self.interval
        return due_in if remaining is None else min(remaining, due_in)

    def tick_released(self, lock: threading.Condition) -> bool:
        """For a thread holding ``lock`` (the manager's wait condition): if a refresh is due, release
        the lock, refresh, take it back and return True. The refresh asks the I/O thread for its
        numbers, and the I/O thread takes that lock to hand back finished tasks, so refreshing
        while holding it would stall both."""
        if not self.due():
            return False
        lock.release()
        try:
            self.tick()
        finally:
            lock.acquire()
        return True

    def tick(self) -> None:
        """Refresh if ``interval`` has passed since the last refresh; otherwise return at once."""
        if self._clock() < self._next_due or self._finished:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is refreshing right now
        try:
            if self._finished or self._clock() < self._next_due:
                return
            self._refresh(final=False)
        finally:
            self._lock.release()

    def finish(self) -> None:
        """The last refresh (the manager is closing): the final numbers, always shown, and the
        terminal line ended with a newline. Later ticks do nothing."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._refresh(final=True)

    def _refresh(self, final: bool) -> None:
        self._next_due = self._clock() + self.interval
        try:
            stats, means = self._collect()
            snapshot = StatusSnapshot.from_stats(stats, means)
            if snapshot == self._shown and not final:
                return  # nothing changed: no new line in a log, no message to the frontend
            self._output.show(snapshot, final)
        except (TimeoutError, OSError, ValueError) as exc:
            # A busy manager, a closed stream or a frontend gone: the display waits for the next
            # refresh; the user's wait() must not fail because of it.
            log.debug("status display refresh skipped: %s: %s", type(exc).__name__, exc)
            return
        except Exception as exc:  # noqa: BLE001 - whatever a frontend raises (zmq, IPython), wait() and close() go on
            # Said once, and the display stops: close() must still close the manager and its logs.
            log.warning("status display turned off: %s: %s", type(exc).__name__, exc)
            self._finished = True
            return
        self._shown = snapshot
        self.refreshes += 1
