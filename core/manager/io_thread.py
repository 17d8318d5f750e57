"""The manager's I/O thread: one asyncio loop on a thread of its own, where the scheduler state and
every connection live, and the two ways the user's threads reach it (``call`` and ``post``)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from ..state.events import Event


class IOThread:
    """The loop and its thread, a member of :class:`core.manager.Manager`.

    ``call(fn)`` runs ``fn`` in the loop and returns its result (at once, in the caller's thread, when
    called from the loop itself or once ``inline()`` says the manager is closed); ``post(event)``
    queues a scheduler event for ``apply``, which gets every event queued in the same loop turn at once.
    """

    def __init__(self, name: str, apply: Callable[..., None], inline: Callable[[], bool]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._apply = apply
        self._inline = inline
        self._inbox: collections.deque[Event] = collections.deque()
        self._kick_pending = False
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
            self.loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._kick_pending = False
        events = []
        while self._inbox:
            events.append(self._inbox.popleft())
        if events:
            self._apply(*events)
