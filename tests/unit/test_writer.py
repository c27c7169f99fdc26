"""The hub's telemetry writer: batching, retry, Retry-After, 413 split, rejection, ack order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cloud_hub.storage import (
    LatestValue,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.writer import Pending, TelemetryWriter
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
    store = FakeStore([StorageRejected("field type conflict")])
    rejected: list[str] = []
    acked: list[bool] = []
    writer = TelemetryWriter(
        store, on_stored=lambda r: None, on_rejected=lambda r, why: rejected.append(why)
    )
    await _run(writer, [Pending(_readings(2), lambda: acked.append(True))])
    assert rejected == ["field type conflict"]
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
