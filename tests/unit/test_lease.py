"""The leader lease on a SQLite registry: acquire, renew, expiry, takeover, step-down, release.

Most tests drive single ``attempt()``s with injected clocks (wall ms for the expiry written to
the row, monotonic seconds for the holder's own deadline); the ``keep()`` tests use real time
with a short lease.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy.exc import OperationalError

from cloud_hub.cluster.lease import LOCAL_VALIDITY, LeaderLease, holder_id
from cloud_hub.cluster.models import LeaseRow
from cloud_hub.registry import Registry

pytestmark = pytest.mark.unit

TTL = 15.0
T0 = 1_790_000_000_000


class Clocks:
    """One wall clock (ms) and one monotonic clock (s) that tests move by hand."""

    def __init__(self) -> None:
        self.wall_ms = T0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall_ms += round(seconds * 1000)
        self.mono += seconds


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    yield registry
    await registry.close()


class _Unreachable:
    """A session factory whose database cannot be reached (no driver thread left behind, as
    a real failing connection would leave one to finish after the test's loop closed)."""

    def begin(self) -> NoReturn:
        raise OperationalError("BEGIN", {}, ConnectionRefusedError("the test cut it off"))


def _lease(registry: Registry, holder: str, clocks: Clocks, ttl_s: float = TTL) -> LeaderLease:
    return LeaderLease(
        registry,
        holder,
        ttl_s,
        clock=lambda: clocks.wall_ms,
        monotonic=lambda: clocks.mono,
    )


async def _row(registry: Registry) -> LeaseRow:
    async with registry.session() as db:
        row = await db.get(LeaseRow, "hub", populate_existing=True)
    assert row is not None
    return row


def test_holder_id_names_client_host_pid_and_a_random_part() -> None:
    first, second = holder_id("hub-a"), holder_id("hub-a")
    assert first.startswith(f"hub-a-{socket.gethostname()}-{os.getpid()}-")
    assert first != second  # a restarted process (same pid in a container) is someone else


async def test_first_wins_others_wait_and_the_holder_renews(registry: Registry) -> None:
    clocks = Clocks()
    a, b = _lease(registry, "a", clocks), _lease(registry, "b", clocks)
    assert await a.attempt() and a.is_leader
    assert not await b.attempt() and not b.is_leader
    acquired = (await _row(registry)).acquired_at
    clocks.advance(TTL / 3)
    assert await a.attempt()  # renewal
    row = await _row(registry)
    assert (row.holder, row.expires_at_ms) == ("a", clocks.wall_ms + int(TTL * 1000))
    assert row.acquired_at == acquired  # a renewal keeps when it was acquired
    clocks.advance(TTL * 0.9)  # within the renewed lease: b still cannot take it
    assert not await b.attempt()


async def test_an_expired_lease_is_taken_over_and_the_old_holder_knows(registry: Registry) -> None:
    clocks = Clocks()
    a, b = _lease(registry, "a", clocks), _lease(registry, "b", clocks)
    assert await a.attempt()
    acquired = (await _row(registry)).acquired_at
    clocks.advance(TTL)  # expires_at_ms == now: not yet expired (strictly older only)
    assert not await b.attempt()
    clocks.advance(0.001)
    assert await b.attempt() and b.is_leader
    row = await _row(registry)
    assert row.holder == "b" and row.acquired_at != acquired
    assert not await a.attempt()  # a's renewal fails: it is not the holder any more
    assert not a.is_leader


async def test_the_holder_steps_down_before_anyone_can_take_over(registry: Registry) -> None:
    clocks = Clocks()
    a, b = _lease(registry, "a", clocks), _lease(registry, "b", clocks)
    assert await a.attempt()
    clocks.advance(TTL * LOCAL_VALIDITY - 0.01)
    assert a.is_leader
    clocks.advance(0.01)  # no renewal got through: the local deadline has passed
    assert not a.is_leader
    assert not await b.attempt()  # and yet nobody else could take the lease so far
    clocks.advance(TTL * (1 - LOCAL_VALIDITY) + 0.001)
    assert await b.attempt()


async def test_a_failed_renewal_keeps_the_lead_until_the_deadline(registry: Registry) -> None:
    clocks = Clocks()
    a = _lease(registry, "a", clocks)
    assert await a.attempt()
    a._session = _Unreachable()  # type: ignore[assignment]  # the database is gone from now on
    clocks.advance(TTL / 3)
    with pytest.raises(OperationalError):
        await a.attempt()
    assert a.is_leader  # still within its deadline
    clocks.advance(TTL / 2)
    assert not a.is_leader


async def test_release_hands_the_lease_over_at_once(registry: Registry) -> None:
    clocks = Clocks()
    a, b = _lease(registry, "a", clocks), _lease(registry, "b", clocks)
    assert await a.attempt()
    await a.release()
    assert not a.is_leader
    assert await b.attempt()
    await a.release()  # not the holder: changes nothing
    assert (await _row(registry)).holder == "b"
    assert not await a.attempt()


async def test_concurrent_first_attempts_have_one_winner(registry: Registry) -> None:
    clocks = Clocks()
    leases = [_lease(registry, f"p{i}", clocks) for i in range(5)]
    results = await asyncio.gather(*(lease.attempt() for lease in leases))
    assert sum(results) == 1
    [winner] = [lease for lease, won in zip(leases, results, strict=True) if won]
    assert (await _row(registry)).holder == winner.holder


async def test_keep_steps_down_by_itself_when_renewals_hang(registry: Registry) -> None:
    ttl = 0.9
    lease = LeaderLease(registry, "a", ttl)
    changes: asyncio.Queue[tuple[bool, float]] = asyncio.Queue()
    good: list[float] = []  # when each successful claim started
    renewed, database_hangs, hung = asyncio.Event(), asyncio.Event(), asyncio.Event()
    claim = lease._claim

    async def claim_or_hang(now_ms: int) -> bool:
        if database_hangs.is_set():  # the database stops answering
            hung.set()
            await asyncio.Event().wait()
        started = time.monotonic()
        won = await claim(now_ms)
        good.append(started)
        if len(good) >= 2:
            renewed.set()
        return won

    async def on_change(leading: bool) -> None:
        changes.put_nowait((leading, time.monotonic()))

    lease._claim = claim_or_hang  # type: ignore[method-assign]
    task = asyncio.create_task(lease.keep(on_change))
    try:
        assert (await asyncio.wait_for(changes.get(), ttl * 3))[0] is True
        await asyncio.wait_for(renewed.wait(), ttl * 3)  # acquired and renewed once
        database_hangs.set()
        leading, at = await asyncio.wait_for(changes.get(), ttl * 3)
        assert leading is False
        assert hung.is_set()  # it did try to renew, and gave the hanging attempt up
        # it stepped down by its local deadline, before the expiry written by its last
        # renewal (which started no later than that claim) could let another process in
        assert at - good[-1] <= ttl * LOCAL_VALIDITY + 0.1
        assert at - good[-1] < ttl
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_keep_takes_over_from_a_holder_that_died(registry: Registry) -> None:
    ttl = 0.9
    a, b = LeaderLease(registry, "a", ttl), LeaderLease(registry, "b", ttl)
    changes: asyncio.Queue[tuple[str, bool, float]] = asyncio.Queue()
    tries = asyncio.Queue[bool]()
    claim = b._claim

    async def counted(now_ms: int) -> bool:
        won = await claim(now_ms)
        tries.put_nowait(won)
        return won

    b._claim = counted  # type: ignore[method-assign]

    def recorder(name: str) -> Callable[[bool], Awaitable[None]]:
        async def on_change(leading: bool) -> None:
            changes.put_nowait((name, leading, time.monotonic()))

        return on_change

    first = asyncio.create_task(a.keep(recorder("a")))
    assert (await asyncio.wait_for(changes.get(), ttl * 3))[:2] == ("a", True)
    second = asyncio.create_task(b.keep(recorder("b")))
    try:
        for _ in range(4):  # b keeps trying while a renews, in vain
            assert await asyncio.wait_for(tries.get(), ttl * 3) is False
        assert changes.empty()
        first.cancel()  # a dies without releasing
        died = time.monotonic()
        name, leading, at = await asyncio.wait_for(changes.get(), ttl * 3)
        assert (name, leading) == ("b", True)
        assert at - died <= ttl + ttl / 3 + 0.2  # expiry plus at most one retry interval
    finally:
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
