"""Tasks waiting for the same input in transit: killing one must not fail the others.

The worker keeps one future per file on its way (``WorkerCache.pending``), shared by every task that
needs it. A task killed by the manager while it waits used to cancel that shared future, so every
other task waiting for the file ended as if killed too and was never reported (found as a hang:
a DaskVine graph interrupted in tasks mode, then the next task on that worker never finished).
"""

from __future__ import annotations

import asyncio

import pytest

from core.wire.messages import InputRef, TaskDefinition
from core.worker.cache import WorkerCache


def _inputs() -> WorkerCache:
    """A cache with nothing in it yet: ``gather`` reads its entries and the files in transit."""
    return WorkerCache("/nonexistent/cache", "/nonexistent/cache-meta", lambda *_: None)


@pytest.mark.timeout(10)
def test_a_killed_waiter_leaves_the_shared_arrival_to_the_others() -> None:
    async def scenario() -> tuple[bool, bool]:
        w = _inputs()
        w.pending["f"] = asyncio.get_running_loop().create_future()
        spec = TaskDefinition(1, "true", inputs=(InputRef("f", "f"),))
        killed = asyncio.create_task(w.gather(spec))
        survivor = asyncio.create_task(w.gather(spec))
        await asyncio.sleep(0)  # both now wait for "f"
        killed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killed
        arrival = w.pending["f"]
        cancelled = arrival.cancelled()
        if not cancelled:
            arrival.set_result(True)  # the file arrives
        return cancelled, await asyncio.wait_for(survivor, 5)

    shared_future_cancelled, survivor_ok = asyncio.run(scenario())
    assert not shared_future_cancelled
    assert survivor_ok
