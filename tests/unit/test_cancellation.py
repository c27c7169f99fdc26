"""A stop is never lost: the cancellation Python 3.11's wait_for swallows, and the bound."""

from __future__ import annotations

import asyncio
import sys

import pytest

from edge_agent.cancellation import cancel_within, describe, raise_if_cancelling
from edge_agent.outbox.memory import gather_burst

pytestmark = pytest.mark.unit


async def _waiting(task: asyncio.Task[object]) -> None:
    """Run the loop until ``task`` waits (a bounded number of steps, no sleeping)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_wait_for_swallows_a_cancel_that_meets_its_result_on_3_11() -> None:
    """The mechanism behind issue 21: set the event and cancel in the same loop iteration."""
    event = asyncio.Event()

    async def waits() -> str:
        await asyncio.wait_for(event.wait(), 10)
        return "carried on"

    task = asyncio.create_task(waits())
    await _waiting(task)
    event.set()
    task.cancel()
    if sys.version_info < (3, 12):
        assert await task == "carried on"  # the cancellation is lost
    else:  # pragma: no cover - fixed in 3.12
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_gather_burst_honours_a_cancel_that_meets_a_new_reading() -> None:
    changed = asyncio.Event()
    task = asyncio.create_task(gather_burst(changed, 10.0, full=lambda: False))
    await _waiting(task)
    changed.set()  # a reading arrives ...
    task.cancel()  # ... in the iteration the agent stops
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()


async def test_a_loop_raises_the_cancellation_a_library_swallowed() -> None:
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            raise_if_cancelling()
            rounds += 1
            event.clear()
            await asyncio.wait_for(event.wait(), 10)  # a library's wait_for, as aiomqtt's

    task = asyncio.create_task(loop())
    await _waiting(task)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done and task.cancelled()
    assert rounds <= 2  # at most the one round in which the cancellation was swallowed


async def test_cancel_within_cancels_again_and_reports_what_does_not_stop() -> None:
    stop_ignored = asyncio.Event()

    async def swallows_once() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            stop_ignored.set()  # as a swallowed cancellation looks from outside
        await asyncio.sleep(10)

    released = False

    async def never_stops() -> None:
        while not released:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    once = asyncio.create_task(swallows_once(), name="swallows-once")
    stubborn = asyncio.create_task(never_stops(), name="stubborn")
    await _waiting(once)
    loop = asyncio.get_running_loop()
    started = loop.time()
    stuck = await cancel_within([once, stubborn], 0.5, recancel_s=0.1)
    assert loop.time() - started < 1.5  # the bound holds
    assert stop_ignored.is_set() and once.cancelled()
    assert stuck == {stubborn}
    assert describe(stubborn).startswith("stubborn at ")
    assert "in never_stops" in describe(stubborn)
    released = True  # let it end, or the test's event loop would wait on it for ever
    stubborn.cancel()
    await asyncio.wait({stubborn}, timeout=2)
    assert stubborn.done()
