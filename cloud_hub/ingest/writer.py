"""Writes accepted telemetry to the store, batching across messages, losing nothing.

The telemetry MQTT session acknowledges a message (PUBACK) only after its readings are in the
store, so while the store is down or slow nothing is lost: unacknowledged messages stay with
the broker (which stops sending once its in-flight window is full: backpressure), and a hub
that dies re-receives them. Failures are handled by kind:

- store unavailable (down, 5xx, 429, timeout): retry the same batch with capped exponential
  backoff and jitter, or after ``Retry-After`` when the store says;
- request too large (413): split the batch in halves and write each;
- data refused (400): counted and dead-lettered with the reason, then acknowledged, since
  retrying cannot help;
- store unavailable for longer than the spool's ``after_s``: the batch goes to the hub's disk
  spool (:mod:`cloud_hub.ingest.spool`) and is acknowledged, so the broker's queue limit cannot lose
  it; while the spool holds anything, new batches queue behind it there, and a drain task
  writes the spool to the store, oldest first, once the store is back.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from cloud_hub.ingest.spool import TelemetrySpool
from cloud_hub.storage import (
    StorageError,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
    StoredReading,
    TelemetryStore,
)

__all__ = ["Pending", "TelemetryWriter"]


async def _nothing() -> None:
    return None


log = structlog.get_logger(__name__)

RETRY_MIN_S = 0.2
RETRY_MAX_S = 15.0


@dataclass
class Pending:
    """The readings of one message and how to acknowledge it once they are stored."""

    readings: list[StoredReading]
    ack: Callable[[], None]


@dataclass
class TelemetryWriter:
    store: TelemetryStore
    on_stored: Callable[[Sequence[StoredReading]], None]
    on_rejected: Callable[[Sequence[StoredReading], str], None]
    max_batch_readings: int = 5000
    linger_s: float = 0.05
    max_queued_messages: int = 2000
    max_in_flight: int = 2
    spool: TelemetrySpool | None = None
    #: how long the store must be unavailable before batches go to the spool
    spool_after_s: float = 0.0
    stats: Counter[str] = field(default_factory=Counter)
    queue: asyncio.Queue[Pending] = field(init=False)
    _spooled: asyncio.Event = field(init=False)
    _spool_full_logged: bool = field(init=False, default=False)
    #: writes failing for want of the store, now (the last write attempt failed so)
    store_unavailable: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.max_queued_messages)
        self._spooled = asyncio.Event()

    async def open(self) -> None:
        """Open the spool (if any); what it kept from before a restart is drained by run()."""
        if self.spool is not None:
            await self.spool.open()
            if self.spool.chunks:
                self._spooled.set()

    async def close(self) -> None:
        if self.spool is not None:
            await self.spool.close()

    async def submit(self, pending: Pending) -> None:
        """Queue a message's readings; waits (backpressure) while the queue is full."""
        await self.queue.put(pending)

    async def run(self) -> None:
        """Write batches, up to ``max_in_flight`` at once (the store works on one while the
        next is gathered), acknowledging their messages strictly in arrival order."""
        in_flight: deque[tuple[asyncio.Future[None], list[Pending]]] = deque()
        getter: asyncio.Future[Pending] | None = None
        drainer = asyncio.ensure_future(self._drain()) if self.spool is not None else None
        try:
            while True:
                while in_flight and in_flight[0][0].done():
                    written, batch = in_flight.popleft()
                    written.result()  # _write only returns when the readings are stored
                    for item in batch:
                        item.ack()
                    self.stats["messages_acked"] += len(batch)
                if len(in_flight) >= self.max_in_flight:
                    await asyncio.wait({in_flight[0][0]})
                    continue
                if getter is None:
                    getter = asyncio.ensure_future(self.queue.get())
                waiting: set[asyncio.Future[Any]] = {getter}
                if in_flight:
                    waiting.add(in_flight[0][0])
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    continue
                batch = await self._gather(getter.result())
                getter = None
                readings = [r for item in batch for r in item.readings]
                written = asyncio.ensure_future(self._write(readings) if readings else _nothing())
                in_flight.append((written, batch))
        finally:
            for written, _ in in_flight:
                written.cancel()
            if getter is not None:
                getter.cancel()
            if drainer is not None:
                drainer.cancel()
                await asyncio.gather(drainer, return_exceptions=True)

    async def _gather(self, first: Pending) -> list[Pending]:
        """``first`` and whatever else arrives within ``linger_s``, up to the batch size."""
        batch = [first]
        count = len(first.readings)
        deadline = time.monotonic() + self.linger_s
        while count < self.max_batch_readings:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            count += len(item.readings)
        return batch

    async def _to_spool(self, readings: list[StoredReading]) -> bool:
        """Append readings to the spool; False when there is none, it is full or failing."""
        spool = self.spool
        if spool is None:
            return False
        if spool.full:
            if not self._spool_full_logged:
                self._spool_full_logged = True
                log.error(
                    "telemetry spool full: holding messages at the broker",
                    spool_bytes=spool.bytes,
                    max_bytes=spool.max_bytes,
                )
            return False
        self._spool_full_logged = False
        try:
            await spool.append(readings)
        except (OSError, sqlite3.Error) as exc:  # a failing disk: hold messages back instead
            self.stats["spool_errors"] += 1
            log.error("telemetry spool write failed", error=repr(exc))
            return False
        if not self._spooled.is_set():
            log.warning("telemetry store unavailable: spooling readings to disk")
        self.stats["spooled_readings"] += len(readings)
        self._spooled.set()
        return True

    async def _drain(self) -> None:
        """Write the spool to the store, oldest chunks first (``max_in_flight`` at once, as
        live batches), until cancelled."""
        assert self.spool is not None
        while True:
            await self._spooled.wait()
            chunks = await self.spool.oldest(self.max_in_flight)
            if not chunks:
                # a batch may have been spooled while that read was under way (after it ran,
                # before it answered): then the count says so, and the next read finds it
                if self.spool.chunks == 0:
                    self._spooled.clear()
                    log.info("telemetry spool drained")
                continue
            await asyncio.gather(*(self._write(c.readings, may_spool=False) for c in chunks))
            await self.spool.remove(chunks)
            self.stats["unspooled_readings"] += sum(len(c.readings) for c in chunks)

    async def _write(self, readings: list[StoredReading], *, may_spool: bool = True) -> None:
        failures = 0
        unavailable_since: float | None = None
        while True:
            if may_spool and self._spooled.is_set() and await self._to_spool(readings):
                return  # queued behind what is spooled already, in order
            started = time.monotonic()
            try:
                await self.store.write(readings)
            except StorageTooLarge:
                if len(readings) == 1:
                    self.on_rejected(readings, "a single reading is too large for the store")
                    return
                self.stats["splits"] += 1
                half = len(readings) // 2
                await self._write(readings[:half], may_spool=may_spool)
                await self._write(readings[half:], may_spool=may_spool)
                return
            except StorageRejected as exc:
                if len(readings) > 1:
                    # isolate what the store refuses: bisect, so that every good reading beside
                    # it is stored (rewriting a half the store partly took is harmless)
                    self.stats["rejected_splits"] += 1
                    half = len(readings) // 2
                    await self._write(readings[:half], may_spool=may_spool)
                    await self._write(readings[half:], may_spool=may_spool)
                    return
                self.stats["rejected_batches"] += 1
                self.on_rejected(readings, str(exc))
                return
            except StorageError as exc:  # unavailable, or anything unforeseen: retry
                self.store_unavailable = True
                failures += 1
                self.stats["write_retries"] += 1
                now = time.monotonic()
                unavailable_since = unavailable_since if unavailable_since is not None else now
                if (
                    may_spool
                    and now - unavailable_since >= self.spool_after_s
                    and await self._to_spool(readings)
                ):
                    return
                retry_after = exc.retry_after if isinstance(exc, StorageUnavailable) else None
                if retry_after is not None:
                    delay = retry_after
                else:
                    delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (failures - 1))
                    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                (log.warning if failures == 1 else log.debug)(
                    "telemetry store unavailable, will retry",
                    error=str(exc),
                    readings=len(readings),
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            self.store_unavailable = False
            if failures:
                log.info("telemetry store back", readings=len(readings), retries=failures)
            self.stats["batches"] += 1
            self.stats["readings"] += len(readings)
            self.stats["write_seconds_total_ms"] += int((time.monotonic() - started) * 1000)
            self.on_stored(readings)
            return
