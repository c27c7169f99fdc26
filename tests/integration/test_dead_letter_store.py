"""The dead-letter store on SQLite and on a real PostgreSQL: written in batches, paged with a
cursor and filters, pruned by rows and by age, kept through a failing database, and never
raising nor blocking in the caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud_hub.dead_letters.models import DEAD_LETTER_PAYLOAD_MAX, DeadLetterRow
from cloud_hub.dead_letters.store import DeadLetterSettings, DeadLetterStore, InvalidCursor
from cloud_hub.registry import Registry
from tests.helpers import eventually

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def registry(registry_url: str) -> AsyncIterator[Registry]:
    registry = Registry(registry_url)
    await registry.start()
    yield registry
    await registry.close()


class Clock:
    """A settable clock for the store's received_at."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def _count(registry: Registry) -> int:
    async with registry.session() as db:
        return int(await db.scalar(select(func.count()).select_from(DeadLetterRow)) or 0)


@contextlib.asynccontextmanager
async def _running(store: DeadLetterStore) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(store.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_dead_letters_are_paged_newest_first_and_filtered(registry: Registry) -> None:
    clock = Clock()
    store = DeadLetterStore(registry, DeadLetterSettings(batch_size=4), clock=clock)
    sources = [
        ("iot/v1/a1/telemetry", None, "seq 1 reading 0: device 'x' is not registered"),
        ("iot/v1/a2/telemetry", None, "seq 2 reading 3: point 'power' expects a uint32 value"),
        ("iot/v1/a1/state", None, "state of agent 'a9' published in 'a1''s namespace"),
        ("elsewhere/x", None, "topic 'elsewhere/x' is outside iot/v1/"),
        ("coap:/p", None, "one auth option (65000) is required"),
        ("coap:/e/st", "nb-1", "100% broken_envelope"),
        ("store:p1", "a1", "partial write: field type conflict"),
    ]
    for minutes, (source, agent_id, reason) in enumerate(sources):
        clock.now = T0 + timedelta(minutes=minutes)
        store.add(source, reason, f"payload {minutes}".encode(), agent_id=agent_id)
    big = bytes(range(256)) * 20  # 5,120 bytes: kept truncated, with its size
    clock.now = T0 + timedelta(minutes=10)
    store.add("iot/v1/a3/telemetry", "too big to keep whole", big)
    assert store.queued == 8
    assert await store.flush() == 8
    assert store.queued == 0 and store.stats["saved"] == 8

    seen: list[DeadLetterRow] = []
    cursor = None
    while True:
        page = await store.page(limit=3, cursor=cursor)
        seen += page.items
        if (cursor := page.next_cursor) is None:
            break
    ids = [row.id for row in seen]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 8
    newest = seen[0]
    assert newest.source == "iot/v1/a3/telemetry" and newest.agent_id == "a3"
    assert newest.payload == big[:DEAD_LETTER_PAYLOAD_MAX] and newest.payload_size == len(big)
    by_source = {row.source: row for row in seen}
    assert by_source["iot/v1/a1/state"].agent_id == "a1"  # parsed from the topic
    assert by_source["elsewhere/x"].agent_id is None
    assert by_source["coap:/p"].agent_id is None
    assert by_source["coap:/e/st"].agent_id == "nb-1"  # given by the caller
    assert by_source["store:p1"].agent_id == "a1"
    assert by_source["store:p1"].payload == b"payload 6" and by_source["store:p1"].payload_size == 9

    async def sources_of(**filters: object) -> list[str]:
        return [row.source for row in (await store.page(**filters)).items]  # type: ignore[arg-type]

    assert await sources_of(agent_id="a1") == ["store:p1", "iot/v1/a1/state", "iot/v1/a1/telemetry"]
    assert await sources_of(since=T0 + timedelta(minutes=5)) == [
        "iot/v1/a3/telemetry",
        "store:p1",
        "coap:/e/st",
    ]
    assert await sources_of(until=T0 + timedelta(minutes=1)) == ["iot/v1/a1/telemetry"]
    # a naive time is UTC; one with an offset is converted (14:03+02:00 is 12:03 UTC)
    east = timezone(timedelta(hours=2))
    assert await sources_of(
        since=datetime(2026, 11, 1, 12, 1), until=datetime(2026, 11, 1, 14, 3, tzinfo=east)
    ) == ["iot/v1/a1/state", "iot/v1/a2/telemetry"]
    assert await sources_of(reason_contains="EXPECTS A UINT32") == ["iot/v1/a2/telemetry"]
    assert await sources_of(reason_contains="100%") == ["coap:/e/st"]  # % is no wildcard
    assert await sources_of(reason_contains="0%") == ["coap:/e/st"]
    assert await sources_of(reason_contains="_") == ["coap:/e/st"]  # nor is _
    assert await sources_of(agent_id="a1", reason_contains="registered") == ["iot/v1/a1/telemetry"]

    for bad in ("nope", "ZGw6MA", "ZGw6LTE", "eHg6MQ", "!!"):  # "dl:0", "dl:-1", "xx:1"
        with pytest.raises(InvalidCursor):
            await store.page(cursor=bad)

    row = await store.get(newest.id)
    assert row is not None and row.reason == "too big to keep whole"
    assert await store.delete(newest.id)
    assert await store.get(newest.id) is None
    assert not await store.delete(newest.id)


async def test_retention_by_rows_and_by_age(registry: Registry) -> None:
    clock = Clock(T0 - timedelta(days=45))
    settings = DeadLetterSettings(max_rows=5, max_age_days=30)
    store = DeadLetterStore(registry, settings, clock=clock)
    for i in range(2):
        store.add("iot/v1/a1/telemetry", f"old {i}", b"")
    clock.now = T0 - timedelta(days=29)
    store.add("iot/v1/a1/telemetry", "not yet old", b"")
    clock.now = T0
    for i in range(6):
        store.add("iot/v1/a1/telemetry", f"new {i}", b"")
    await store.flush()
    assert await _count(registry) == 9

    assert await store.prune(now=T0) == 4  # 2 past 30 days, then 2 more beyond 5 rows
    reasons = [row.reason for row in (await store.page()).items]
    assert reasons == [f"new {i}" for i in range(5, 0, -1)]
    assert await store.prune(now=T0) == 0
    assert await store.prune(now=T0 + timedelta(days=31)) == 5
    assert await _count(registry) == 0
    assert store.stats["pruned"] == 9


async def test_retention_runs_in_the_background(registry: Registry) -> None:
    settings = DeadLetterSettings(max_rows=3, flush_interval_s=0.05, prune_interval_s=0.1)
    store = DeadLetterStore(registry, settings)
    async with _running(store):
        for i in range(10):
            store.add("iot/v1/a1/telemetry", f"reason {i}", b"x")

        async def pruned() -> bool | None:
            return True if store.stats["pruned"] >= 7 and await _count(registry) == 3 else None

        await eventually(pruned)
    reasons = [row.reason for row in (await store.page()).items]
    assert reasons == ["reason 9", "reason 8", "reason 7"]


async def test_a_failing_database_loses_nothing_queued(registry: Registry) -> None:
    """The table dropped (the database refusing every write) then back: all are written."""
    settings = DeadLetterSettings(flush_interval_s=0.05, retry_max_s=0.2, batch_size=7)
    store = DeadLetterStore(registry, settings)
    async with _running(store):
        store.add("iot/v1/a1/telemetry", "before", b"0")
        await eventually(lambda: _true(store.stats["saved"] == 1))
        async with registry.engine.begin() as conn:
            await conn.run_sync(DeadLetterRow.__table__.drop)
        for i in range(30):
            store.add("iot/v1/a1/telemetry", f"during {i}", str(i).encode())
        await eventually(lambda: _true(store.stats["write_failures"] >= 2))
        assert store.queued == 30
        async with registry.engine.begin() as conn:
            await conn.run_sync(DeadLetterRow.__table__.create)
        await eventually(lambda: _true(store.queued == 0))
    assert await _count(registry) == 30
    reasons = {row.reason for row in (await store.page(limit=100)).items}
    assert reasons == {f"during {i}" for i in range(30)}
    assert store.stats["unsaved"] == 0


async def test_a_full_queue_drops_the_newest_and_add_never_raises(registry: Registry) -> None:
    store = DeadLetterStore(registry, DeadLetterSettings(queue_size=3))
    for i in range(5):  # called bare: any exception fails the test
        store.add("iot/v1/a1/telemetry", f"reason {i}", b"")
    assert store.queued == 3 and store.stats["unsaved"] == 2
    await store.flush()
    # what a refused message may carry: text PostgreSQL refuses as is, a payload of any type
    store.add("iot/v1/a1/\x00te\udcfflemetry", "NUL \x00 and lone surrogate \ud800", b"\x00\xff")
    store.add("iot/v1/a1/telemetry", "a memoryview", memoryview(b"abc"))  # type: ignore[arg-type]
    store.add("iot/v1/a1/telemetry", "no payload at all", None)  # type: ignore[arg-type]
    store.add("x" * 1000, "r" * 100_000, b"")
    assert store.stats["unsaved"] == 3  # only the None payload
    await store.flush()
    rows = {row.reason[:12]: row for row in (await store.page()).items}
    odd = rows["NUL \\x00 and"]
    assert odd.reason == "NUL \\x00 and lone surrogate \\ud800" and odd.payload == b"\x00\xff"
    assert odd.source == "iot/v1/a1/\\x00te\\udcfflemetry" and odd.agent_id is None
    assert rows["a memoryview"].payload == b"abc"
    long = rows["r" * 12]
    assert len(long.source) == 256 and len(long.reason) == 2000
    await store.close()
    store.add("iot/v1/a1/telemetry", "after close", b"")
    assert store.stats["unsaved"] == 4


async def test_close_writes_what_is_queued_in_bounded_time(registry: Registry) -> None:
    store = DeadLetterStore(registry, DeadLetterSettings(batch_size=10))
    for i in range(25):
        store.add("iot/v1/a1/telemetry", f"reason {i}", b"")
    await store.close()
    assert await _count(registry) == 25 and store.queued == 0

    stuck = DeadLetterStore(registry, DeadLetterSettings(close_timeout_s=0.3))
    async with registry.engine.begin() as conn:
        await conn.run_sync(DeadLetterRow.__table__.drop)
    for i in range(4):
        stuck.add("iot/v1/a1/telemetry", f"reason {i}", b"")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stuck.close()
    assert loop.time() - started < 3
    assert stuck.stats["unsaved"] == 4 and stuck.queued == 0


async def _true(condition: bool) -> bool | None:
    return True if condition else None
