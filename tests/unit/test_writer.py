"""The hub's telemetry writer: batching, retry, Retry-After, 413 split, rejection, ack order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from cloud_hub.ingest.spool import SpoolChunk, TelemetrySpool
from cloud_hub.ingest.writer import Pending, TelemetryWriter
from cloud_hub.storage import (
    LatestValue,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
    StoredReading,
)
from tests.helpers import eventually

pytestmark = pytest.mark.unit


class FakeStore:
    def __init__(self, failures: list[Exception], max_batch: int | None = None) -> None:
        self.failures = failures
        self.max_batch = max_batch
        self.written: list[StoredReading] = []
        self.calls = 0

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def write(self, readings: Sequence[StoredReading]) -> None:
        self.calls += 1
        if self.max_batch is not None and len(readings) > self.max_batch:
            raise StorageTooLarge("too large")
        if self.failures:
            raise self.failures.pop(0)
        self.written.extend(readings)

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        return {}


def _readings(n: int, start: int = 0) -> list[StoredReading]:
    return [StoredReading("d1", "a1", "smart_pole", start + i, {"power": 1.0}) for i in range(n)]


async def _run(writer: TelemetryWriter, items: list[Pending]) -> None:
    task = asyncio.create_task(writer.run())
    for item in items:
        await writer.submit(item)

    async def all_acked() -> bool | None:
        return True if writer.stats["messages_acked"] >= len(items) else None

    try:
        await eventually(all_acked, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_retries_until_the_store_is_back_and_acks_in_order() -> None:
    store = FakeStore([StorageUnavailable("down"), StorageUnavailable("down", retry_after=0.0)])
    acked: list[int] = []
    writer = TelemetryWriter(store, on_stored=lambda r: None, on_rejected=lambda r, why: None)
    items = [Pending(_readings(3, i * 10), lambda i=i: acked.append(i)) for i in range(5)]
    await _run(writer, items)
    assert acked == [0, 1, 2, 3, 4]
    assert len(store.written) == 15
    assert writer.stats["write_retries"] == 2


async def test_too_large_batches_are_split() -> None:
    store = FakeStore([], max_batch=4)
    writer = TelemetryWriter(store, on_stored=lambda r: None, on_rejected=lambda r, why: None)
    await _run(writer, [Pending(_readings(10), lambda: None)])
    assert sorted(r.ts_ms for r in store.written) == list(range(10))
    assert writer.stats["splits"] >= 2


async def test_rejected_data_is_dead_lettered_and_acked() -> None:
    # the store refuses the pair, then the first reading alone: only that one is refused
    store = FakeStore([StorageRejected("field type conflict")] * 2)
    rejected: list[tuple[int, str]] = []
    acked: list[bool] = []
    writer = TelemetryWriter(
        store,
        on_stored=lambda r: None,
        on_rejected=lambda r, why: rejected.extend((x.ts_ms, why) for x in r),
    )
    await _run(writer, [Pending(_readings(2), lambda: acked.append(True))])
    assert rejected == [(0, "field type conflict")]
    assert [r.ts_ms for r in store.written] == [1]
    assert writer.stats["rejected_splits"] == 1
    assert acked == [True]


async def test_messages_without_readings_are_acked_without_a_write() -> None:
    store = FakeStore([])
    acked: list[bool] = []
    writer = TelemetryWriter(store, on_stored=lambda r: None, on_rejected=lambda r, why: None)
    await _run(writer, [Pending([], lambda: acked.append(True))])
    assert acked == [True]
    assert store.calls == 0


async def test_two_writes_in_flight_still_ack_in_arrival_order() -> None:
    class SlowFirst(FakeStore):
        async def write(self, readings: Sequence[StoredReading]) -> None:
            if readings[0].ts_ms == 0:
                await asyncio.sleep(0.2)  # the first batch is slow at the store
            await super().write(readings)

    store = SlowFirst([])
    acked: list[int] = []
    writer = TelemetryWriter(
        store,
        on_stored=lambda r: None,
        on_rejected=lambda r, why: None,
        linger_s=0,
        max_batch_readings=3,
    )
    items = [Pending(_readings(3, i * 10), lambda i=i: acked.append(i)) for i in range(4)]
    await _run(writer, items)
    assert acked == [0, 1, 2, 3]
    assert store.calls >= 2


# -- the disk spool ---------------------------------------------------------------------------


class Switchable(FakeStore):
    """A store that is down until ``up`` is set."""

    def __init__(self) -> None:
        super().__init__([])
        self.up = False

    async def write(self, readings: Sequence[StoredReading]) -> None:
        self.calls += 1
        if not self.up:
            raise StorageUnavailable("down", retry_after=0.01)
        self.written.extend(readings)


def _spooling_writer(
    store: FakeStore, path: Path, stored: list[StoredReading], max_bytes: int = 1 << 20
) -> TelemetryWriter:
    return TelemetryWriter(
        store,
        on_stored=stored.extend,
        on_rejected=lambda r, why: None,
        spool=TelemetrySpool(path, max_bytes),
        spool_after_s=0.0,
        linger_s=0,
        max_batch_readings=5,  # a batch a message
    )


async def test_a_store_outage_spools_to_disk_acks_and_drains_in_order(tmp_path: Path) -> None:
    store = Switchable()
    stored: list[StoredReading] = []
    writer = _spooling_writer(store, tmp_path / "spool.db", stored)
    await writer.open()
    acked: list[int] = []
    task = asyncio.create_task(writer.run())
    try:
        for i in range(20):
            await writer.submit(Pending(_readings(5, i * 10), lambda i=i: acked.append(i)))

        async def all_acked() -> bool | None:
            return True if len(acked) == 20 else None

        await eventually(all_acked)  # acknowledged while the store is still down
        assert acked == list(range(20))
        assert store.written == []
        assert writer.spool is not None and writer.spool.readings == 100
        store.up = True

        async def drained() -> bool | None:
            return True if writer.spool is not None and writer.spool.chunks == 0 else None

        await eventually(drained)
        await writer.submit(Pending(_readings(1, 999), lambda: acked.append(99)))
        await eventually(lambda: _true_if(len(store.written) == 101))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.close()
    expected = [r.ts_ms for i in range(20) for r in _readings(5, i * 10)] + [999]
    assert [r.ts_ms for r in store.written] == expected  # oldest first, then live again
    assert [r.ts_ms for r in stored] == expected  # stored events only once really stored
    assert writer.stats["spooled_readings"] == writer.stats["unspooled_readings"] == 100


async def _true_if(condition: bool) -> bool | None:
    return True if condition else None


async def test_what_was_spooled_before_a_restart_is_drained_after_it(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    first = _spooling_writer(Switchable(), path, [])
    await first.open()
    task = asyncio.create_task(first.run())
    acked: list[int] = []
    for i in range(3):
        await first.submit(Pending(_readings(4, i * 10), lambda i=i: acked.append(i)))
    await eventually(lambda: _true_if(len(acked) == 3))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await first.close()  # the hub stops with the store still down

    store = Switchable()
    store.up = True
    second = _spooling_writer(store, path, [])
    await second.open()
    assert second.spool is not None and second.spool.readings == 12
    task = asyncio.create_task(second.run())
    try:
        await eventually(lambda: _true_if(len(store.written) == 12))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await second.close()
    assert sorted(r.ts_ms for r in store.written) == sorted(
        r.ts_ms for i in range(3) for r in _readings(4, i * 10)
    )


async def test_a_full_spool_holds_messages_back_instead_of_dropping_them(tmp_path: Path) -> None:
    store = Switchable()
    writer = _spooling_writer(store, tmp_path / "spool.db", [], max_bytes=200)
    await writer.open()
    acked: list[int] = []
    task = asyncio.create_task(writer.run())
    try:
        for i in range(10):
            await writer.submit(Pending(_readings(5, i * 10), lambda i=i: acked.append(i)))
        await eventually(lambda: _true_if(len(acked) >= 1))
        assert writer.spool is not None
        spooled = writer.spool.chunks
        assert 0 < spooled < 10 and writer.spool.full
        assert len(acked) == spooled  # the rest waits, unacknowledged, at the broker
        store.up = True
        await eventually(lambda: _true_if(len(acked) == 10))
        await eventually(lambda: _true_if(len(store.written) == 50))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.close()
    assert sorted(r.ts_ms for r in store.written) == sorted(
        r.ts_ms for i in range(10) for r in _readings(5, i * 10)
    )


async def test_a_batch_spooled_while_the_drain_looks_is_drained_too(tmp_path: Path) -> None:
    """The drain read the spool empty while a batch was being spooled (the read ran first,
    the append answered first): the batch must not be left behind until a restart."""
    late = _readings(3, 500)

    class RacingSpool(TelemetrySpool):
        raced = False

        async def oldest(self, count: int = 1) -> list[SpoolChunk]:
            found = await super().oldest(count)
            if not found and not self.raced and self.readings == 0:
                self.raced = True
                await self.append(late)  # a live batch spooled meanwhile
            return found

    store = Switchable()
    writer = TelemetryWriter(
        store,
        on_stored=lambda r: None,
        on_rejected=lambda r, why: None,
        spool=RacingSpool(tmp_path / "spool.db", 1 << 20),
        spool_after_s=0.0,
        linger_s=0,
    )
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        await writer.submit(Pending(_readings(2), lambda: None))
        await eventually(lambda: _true_if(writer.stats["spooled_readings"] == 2))
        store.up = True
        await eventually(lambda: _true_if(len(store.written) == 5))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.close()
    assert sorted(r.ts_ms for r in store.written) == [0, 1, 500, 501, 502]
