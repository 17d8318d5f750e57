"""The manager's I/O thread: one asyncio loop on a thread of its own, where the scheduler state and
every connection live, and the two ways the user's threads reach it (``call`` and ``post``)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..state.events import Event

log = logging.getLogger("core.manager")

BURST_DRAIN_DELAY = 0.002  # s: while posts keep coming, the I/O thread takes them this often


class IOThread:
    """The loop and its thread, a member of :class:`core.manager.Manager`.

    ``call(fn)`` runs ``fn`` in the loop and returns its result (at once, in the caller's thread, when
    called from the loop itself or once ``inline()`` says the manager is closed), after every event
    posted before it; ``post(event)`` queues a scheduler event for ``apply``, which gets the events
    queued meanwhile in one batch.

    The hand-off is batched: a post wakes the loop only when no drain is due. A drain that found
    more than one event (the user is submitting a burst) keeps the loop's own timer as the next
    drain (``BURST_DRAIN_DELAY`` s later) instead of being woken again: a wake-up from another
    thread is a system call and a switch of the interpreter lock, which per post cost more than the
    submit itself. A lone post (a drain that found one event) re-opens the wake-up, so it is applied
    at once; the last posts of a burst wait at most one delay.
    """

    def __init__(self, name: str, apply: Callable[..., None], inline: Callable[[], bool]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._apply = apply
        self._inline = inline
        self._inbox: collections.deque[Event] = collections.deque()
        self._kick_pending = False
        self._ident: int | None = None  # the I/O thread's, once it runs
        self._started = threading.Event()
        self._start_io: Callable[[], Awaitable[None]] | None = None
        self._ended: Callable[[], None] | None = None

    def start(self, start_io: Callable[[], Awaitable[None]], ended: Callable[[], None]) -> None:
        """Start the thread: ``start_io()`` runs in the loop first (this returns once it has), then the
        loop runs until stopped; ``ended()`` runs in the thread after the loop has closed."""
        self._start_io, self._ended = start_io, ended
        self.thread.start()
        self._started.wait()

    def _run(self) -> None:
        assert self._start_io is not None and self._ended is not None
        self._ident = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start_io())
        self._started.set()
        self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for t in pending:
            t.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()
        self._ended()

    def call(self, fn: Callable[[], Any], timeout: float = 60) -> Any:
        """Run ``fn`` in the I/O thread (where the state lives) and return its result."""
        if self._inline() or threading.current_thread() is self.thread:
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                self.flush()  # what the caller posted before this call comes first (a burst's drain may be due later)
            except Exception:  # noqa: BLE001 - the events' failure is not the caller's: logged, as a drain's would be
                log.exception("applying posted events failed")
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout)

    def post(self, event: Event) -> None:
        """Queue an event from the user's thread; the I/O thread applies queued events in one batch."""
        self._inbox.append(event)
        if not self._kick_pending:
            self._kick_pending = True
            if threading.get_ident() == self._ident:
                # Posted by the I/O thread itself (a finalizer undeclaring a finished task's buffer):
                # the loop is running, so no wake-up through its self-pipe (a write and a read) is needed.
                self.loop.call_soon(self._drain_inbox)
            else:
                self.loop.call_soon_threadsafe(self._drain_inbox)

    def _take_inbox(self) -> list[Event]:
        # popleft until empty: an event appended meanwhile by another thread is taken now or by the
        # next drain, never lost.
        inbox, events = self._inbox, []
        while inbox:
            events.append(inbox.popleft())
        return events

    def _drain_inbox(self) -> None:
        events = self._take_inbox()
        if len(events) > 1:
            # A burst: the next drain is this loop's timer; posts meanwhile need not wake it.
            self.loop.call_later(BURST_DRAIN_DELAY, self._drain_inbox)
        else:
            # Quiet: posts wake the loop again. Reset before the last look, so an event appended
            # after it finds the flag down and wakes the loop itself.
            self._kick_pending = False
            events += self._take_inbox()
        if events:
            self._apply(*events)

    def flush(self) -> None:
        """In the loop: apply every event posted so far, before what the caller does next."""
        events = self._take_inbox()
        if events:
            self._apply(*events)
