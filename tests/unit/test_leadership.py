"""Leader duties follow the lease: prepared and started on gaining it, stopped on losing it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from cloud_hub.cluster.leadership import Leadership
from cloud_hub.cluster.lease import OnChange, SoleLease

pytestmark = pytest.mark.unit


class ScriptedLease:
    """A lease whose gains and losses the test decides."""

    def __init__(self) -> None:
        self.held = False
        self.released = False
        self.changes: asyncio.Queue[bool] = asyncio.Queue()

    @property
    def is_leader(self) -> bool:
        return self.held

    async def attempt(self) -> bool:
        return self.held

    async def keep(self, on_change: OnChange) -> None:
        while True:
            leading = await self.changes.get()
            self.held = leading
            await on_change(leading)

    async def release(self) -> None:
        self.held, self.released = False, True


class Duties:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.running = asyncio.Event()
        self.finished = asyncio.Event()

    async def prepare(self) -> None:
        self.finished.clear()
        self.log.append("prepare")

    def finish(self) -> None:
        self.log.append("finish")
        self.finished.set()

    async def duty(self) -> None:
        self.log.append("run")
        self.running.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.running.clear()
            self.log.append("cancelled")


async def test_duties_run_exactly_while_the_lease_is_held() -> None:
    lease, duties = ScriptedLease(), Duties()
    leadership = Leadership(
        lease, [("duty", duties.duty)], prepare=duties.prepare, finish=duties.finish
    )
    await leadership.start()
    assert not leadership.is_leader and duties.log == []  # the first attempt lost
    task = asyncio.create_task(leadership.run())
    try:
        lease.changes.put_nowait(True)
        await asyncio.wait_for(duties.running.wait(), 5)
        assert leadership.is_leader and duties.log == ["prepare", "run"]
        lease.changes.put_nowait(False)  # lost (expired locally, or taken over)
        await asyncio.wait_for(duties.finished.wait(), 5)
        assert not leadership.is_leader
        assert duties.log == ["prepare", "run", "cancelled", "finish"]
        lease.changes.put_nowait(True)  # gained again: prepared again (timers reloaded)
        await asyncio.wait_for(duties.running.wait(), 5)
        assert duties.log[-2:] == ["prepare", "run"] and leadership.changes == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await leadership.close()
    assert lease.released and duties.log[-2:] == ["cancelled", "finish"]


async def test_a_sole_process_leads_from_start_on() -> None:
    duties = Duties()
    leadership = Leadership(
        SoleLease(), [("duty", duties.duty)], prepare=duties.prepare, finish=duties.finish
    )
    await leadership.start()
    assert leadership.is_leader and duties.log == ["prepare"]  # before run(), as hub.start()
    task = asyncio.create_task(leadership.run())
    await asyncio.wait_for(duties.running.wait(), 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert duties.log == ["prepare", "run", "cancelled", "finish"]
