"""The on-disk store-and-forward outbox: what waits to go up survives outages and restarts.

:class:`DiskOutbox` has the interface of the in-memory :class:`~edge_agent.outbox.Outbox`
(``put_reading``, ``put_control``, ``await next()``, ``ack(item)``, ``depth``,
``dropped_readings``) and keeps everything in one SQLite file (WAL mode) in the agent's data
directory. Only a few hundred readings (one flush group and one batch) are ever held in memory,
however long the outage.

Delivery
    A reading is committed to the file before it can be handed out by :meth:`DiskOutbox.next`,
    and deleted only by :meth:`DiskOutbox.ack` (after the broker's PUBACK). A telemetry batch
    that was handed out but not acknowledged is handed out again with the *same* ``seq`` and
    the *same* readings, after a reconnect (the same object) or after a restart (rebuilt from
    the file), so the hub sees a duplicate as a duplicate. ``seq`` keeps growing across
    restarts. ``Reading.ts`` (the edge read time) is stored as given and never rewritten.
    Control messages (events, alarms, command results) are committed on ``put_control`` and go
    before telemetry, oldest first.

Live data during a replay
    Readings put since the last live batch are *live*; what was on disk at start-up, and live
    readings skipped over, are the *backlog*. While both exist, batches alternate: one live
    batch, then one backlog batch (the oldest backlog readings). A live batch is the oldest
    ``batch_max_readings`` live readings, unless more than two batches' worth are live (the
    uplink was down or fell behind): then it is the *newest* ones, and the older live readings
    join the backlog. Each batch is in read order. So after an outage live data is at most
    about two batches behind however long the backlog, and the backlog drains at half the
    uplink's pace behind it (at full pace once nothing is live). Without a backlog this is a
    plain FIFO with the in-memory outbox's batching delay.

Bound by bytes
    ``max_bytes`` bounds the spool files (database and WAL together). When the stored data
    reaches its share of the cap, the oldest telemetry is deleted in the same transaction that
    added the new readings, and counted in ``dropped_readings`` (kept in the file). The batch
    being published is never cut. Control messages are never dropped: if they alone exceed
    the cap, the spool grows past it; this is logged and counted in ``control_over_cap``.

Durability (what survives what)
    Readings are buffered in memory and committed in one small transaction at most
    ``flush_interval_s`` (default 0.2 s) after the first of them, or as soon as
    ``flush_max_readings`` (default 1000) are waiting, whichever comes first; ``flush()`` and
    ``close()`` commit at once, and so does ``put_control`` (with any buffered readings, so
    order holds). A commit in WAL mode is in the operating system's page cache once it
    returns, so:

    * process crash, ``kill -9``, OOM kill: everything committed survives; at most the
      readings of the last flush interval (fewer than ``flush_max_readings``) are lost;
    * power loss or kernel panic, ``synchronous="NORMAL"`` (default): the file stays
      consistent, but commits since the last WAL checkpoint (every ``max_bytes // 8`` of WAL,
      at most 1 MiB) may be lost;
    * power loss, ``synchronous="FULL"``: every commit is fsynced, so the process-crash bound
      holds for power loss too, at the price of one fsync per flush.

    Every commit is one short transaction on the event loop (about a millisecond for a flush
    group; a WAL checkpoint of at most 1 MiB, and with ``FULL`` the fsync, can take longer on
    slow flash: ``bench/spool.py`` measures it). Opening runs ``PRAGMA quick_check`` over the
    whole file; ``await asyncio.to_thread(DiskOutbox.open, ...)`` keeps a large spool's check
    off the loop.

Recovery
    A file that is not a spool, is corrupt or has an unknown schema version is renamed aside
    (``<name>.corrupt-<UTC time>``, with its WAL), logged at ERROR, and a fresh spool is
    started; ``corrupt_files_set_aside`` counts these (kept in the new file). A file locked by
    another process raises :class:`SpoolError` instead: two agents must not share a spool.
    A stored message that no longer parses (a reading, or a control message whose model is
    gone) is deleted, logged with its content at ERROR and counted (``corrupt_readings``,
    ``corrupt_control``), so one bad row never blocks the uplink.

Modules
    :mod:`edge_agent.spool_file` opens the SQLite file (WAL, lock, check, setting a bad one
    aside) and keeps the row counts and counters in step with it; :mod:`edge_agent.spool_batches`
    reads control messages and telemetry batches back out of it. This module decides what goes
    in, what comes out when, and what is dropped.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import structlog
from pydantic import BaseModel

from device_profiles.wire import (
    MAX_READINGS_PER_BATCH,
    MESSAGE_TYPES,
    Channel,
    Reading,
)
from edge_agent.outbox import Outgoing, gather_burst
from edge_agent.spool_batches import SpoolBatch, SpoolReader
from edge_agent.spool_file import SCHEMA_VERSION, SpoolError, SpoolFile, Synchronous, spool_files

__all__ = [
    "MIN_MAX_BYTES",
    "SCHEMA_VERSION",
    "DiskOutbox",
    "SpoolError",
    "SpoolMetrics",
    "Synchronous",
]

log = structlog.get_logger(__name__)

MIN_MAX_BYTES = 256 * 1024
_WAL_MIN = 64 * 1024
_WAL_MAX = 1024 * 1024
_NO_RANGE = (0, -1)
_WIRE_MODELS: tuple[type[BaseModel], ...] = MESSAGE_TYPES


@dataclass(frozen=True)
class SpoolMetrics:
    depth: int
    backlog_readings: int
    bytes_used: int
    file_bytes: int
    dropped_readings: int
    oldest_ts: int | None
    control_waiting: int
    control_over_cap: int
    corrupt_files_set_aside: int
    corrupt_readings: int
    corrupt_control: int


class DiskOutbox:
    """A store-and-forward outbox in one SQLite file; see the module docstring."""

    _closed = False

    def __init__(
        self,
        path: Path | str,
        agent_id: str,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        batch_max_readings: int = 500,
        batch_max_delay_s: float = 0.2,
        flush_interval_s: float = 0.2,
        flush_max_readings: int = 1000,
        synchronous: Synchronous = "NORMAL",
        control_models: Iterable[type[BaseModel]] = (),
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}")
        if not 1 <= batch_max_readings <= MAX_READINGS_PER_BATCH:
            raise ValueError(f"batch_max_readings must be 1..{MAX_READINGS_PER_BATCH}")
        if flush_max_readings < 1 or flush_interval_s <= 0:
            raise ValueError("flush_max_readings must be >= 1 and flush_interval_s > 0")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.agent_id = agent_id
        self.max_bytes = max_bytes
        self.batch_max_readings = batch_max_readings
        self.batch_max_delay_s = batch_max_delay_s
        self.flush_interval_s = flush_interval_s
        self.flush_max_readings = flush_max_readings
        self.synchronous = synchronous
        self.on_flush = on_flush
        #: readings committed by this instance (``on_flush`` receives it after each commit)
        self.flushed_readings = 0
        self.control_over_cap = 0
        self._models = {m.__name__: m for m in (*_WIRE_MODELS, *control_models)}
        self._wal_bytes = min(_WAL_MAX, max(_WAL_MIN, max_bytes // 8))
        # data may use what the WAL (up to twice its limit between checkpoints) and one
        # flush group leave of the cap
        self._data_budget = max_bytes - 2 * self._wal_bytes - max(64 * 1024, max_bytes // 16)
        self._pending: list[tuple[int, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._inflight: Outgoing | None = None
        self._batch: SpoolBatch | None = None  # the telemetry batch handed out and not acked
        self._control_id = 0  # the control message handed out and not acked
        self._over_cap = False
        self._failing = False  # the last flush failed (disk full, I/O error): retry on a timer
        self._file = SpoolFile(self.path, synchronous=synchronous, wal_bytes=self._wal_bytes)
        self._db = self._file.db
        self._reader = SpoolReader(self._file, self._models)
        seq, lo, hi = (self._file.meta(k, -1) for k in ("batch_seq", "batch_lo", "batch_hi"))
        if seq >= 0:
            self._batch = SpoolBatch(seq, lo, hi)
        stored_agent = self._file.meta("agent_id", agent_id)
        if stored_agent != agent_id:
            log.warning(
                "spool was written by another agent id", path=str(self.path), was=stored_agent
            )
        with self._file.tx():
            self._file.set_meta("agent_id", agent_id)
        log.info(
            "spool opened",
            path=str(self.path),
            readings=self._file.disk_rows,
            control=self._file.control_rows,
            next_seq=self._file.counters["next_seq"],
        )

    @classmethod
    def open(cls, path: Path | str, agent_id: str, **settings: Any) -> Self:
        """Open (or create) the spool at ``path``, recovering what is on disk."""
        return cls(path, agent_id, **settings)

    # -- producers ---------------------------------------------------------------------------
    def put_reading(self, reading: Reading) -> None:
        self._check_open()
        self._pending.append((reading.ts, reading.model_dump_json().encode()))
        self._changed.set()
        if len(self._pending) >= self.flush_max_readings and not self._failing:
            self.flush()
        elif self._timer is None:
            self._schedule_flush()

    def put_control(self, channel: Channel, message: BaseModel) -> None:
        """Commit a control message (and any buffered readings) now; never dropped."""
        self._check_open()
        kind = type(message).__name__
        if self._models.get(kind) is not type(message):
            raise SpoolError(f"{kind} is not a known wire model; pass it in control_models")
        body = message.model_dump_json().encode()
        try:
            with self._file.tx():
                self._insert_pending()
                self._db.execute(
                    "INSERT INTO control (channel, kind, body) VALUES (?, ?, ?)",
                    (channel.value, kind, body),
                )
                self._enforce_cap()
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot store a control message in {self.path}: {exc}") from exc
        self._file.control_rows += 1
        self._after_commit()
        self._changed.set()

    def flush(self) -> int:
        """Commit buffered readings now; return how many were committed (0 if it failed)."""
        self._cancel_timer()
        if not self._pending or self._closed:
            return 0
        try:
            with self._file.tx():
                count = self._insert_pending()
        except sqlite3.Error as exc:
            self._keep_pending_bounded()
            (log.debug if self._failing else log.error)(
                "spool write failed; readings kept in memory, retrying",
                path=str(self.path),
                error=str(exc),
                pending=len(self._pending),
            )
            self._failing = True
            self._schedule_flush()
            return 0
        if self._failing:
            self._failing = False
            log.info("spool writable again", path=str(self.path), committed=count)
        self._after_commit()
        return count

    # -- consumer ----------------------------------------------------------------------------
    async def next(self) -> Outgoing:
        """The next message to publish; the same one again until it is acknowledged."""
        self._check_open()
        if self._inflight is not None:
            return self._inflight
        if self._batch is not None:  # handed out before a restart: same seq, same readings
            item = self._telemetry(self._batch)
            if item.readings:
                return item
            self.ack(item)
        while not self._file.control_rows and not self.depth:
            self._changed.clear()
            await self._changed.wait()
            self._check_open()
        if control := self._next_control():
            return control
        # let a burst gather into one message (unless a backlog waits), never past the delay
        await gather_burst(
            self._changed,
            self.batch_max_delay_s,
            full=lambda: self.depth >= self.batch_max_readings or bool(self._file.control_rows),
            after_wake=self._check_open,
        )
        if control := self._next_control():
            return control
        while self.flush() == 0 and not self._file.disk_rows:  # the disk refused the readings
            await asyncio.sleep(self.flush_interval_s)  # retry later; they stay in memory
            self._check_open()
        return self._next_telemetry()

    def ack(self, item: Outgoing) -> None:
        """The broker has the message: delete it from the spool."""
        if item is not self._inflight or self._closed:
            return
        try:
            with self._file.tx():
                if self._batch is not None:
                    cur = self._db.execute(
                        "DELETE FROM readings WHERE id BETWEEN ? AND ?",
                        (self._batch.lo, self._batch.hi),
                    )
                    for key in ("batch_seq", "batch_lo", "batch_hi"):
                        self._file.set_meta(key, -1)
                else:
                    cur = self._db.execute("DELETE FROM control WHERE id = ?", (self._control_id,))
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot remove a published message from {self.path}: {exc}") from exc
        if self._batch is not None:
            self._file.disk_rows -= cur.rowcount
            self._batch = None
        else:
            self._file.control_rows -= cur.rowcount
        self._inflight = None

    # -- metrics -----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Readings waiting (including those in the message being published)."""
        return self._file.disk_rows + len(self._pending)

    @property
    def backlog_readings(self) -> int:
        """Readings committed to the spool and not yet acknowledged."""
        return self._file.disk_rows

    @property
    def dropped_readings(self) -> int:
        """Oldest readings dropped to stay within ``max_bytes`` (over the spool's lifetime)."""
        return self._file.counters["dropped_readings"]

    @property
    def corrupt_files_set_aside(self) -> int:
        return self._file.counters["corrupt_files_set_aside"]

    @property
    def bytes_used(self) -> int:
        """Bytes of the database holding data (free pages excluded; the WAL not counted)."""
        self._check_open()
        return self._file.bytes_used()

    @property
    def file_bytes(self) -> int:
        """Size of the spool's files on disk (database and WAL)."""
        return sum(p.stat().st_size for p in spool_files(self.path) if p.exists())

    @property
    def oldest_ts(self) -> int | None:
        """Read time of the oldest reading waiting (ms since the epoch), None if none."""
        self._check_open()
        row = self._db.execute("SELECT ts FROM readings ORDER BY id LIMIT 1").fetchone()
        if row is not None:
            return int(row[0])
        return self._pending[0][0] if self._pending else None

    def metrics(self) -> SpoolMetrics:
        return SpoolMetrics(
            depth=self.depth,
            backlog_readings=self.backlog_readings,
            bytes_used=self.bytes_used,
            file_bytes=self.file_bytes,
            dropped_readings=self.dropped_readings,
            oldest_ts=self.oldest_ts,
            control_waiting=self._file.control_rows,
            control_over_cap=self.control_over_cap,
            corrupt_files_set_aside=self.corrupt_files_set_aside,
            corrupt_readings=self._file.counters["corrupt_readings"],
            corrupt_control=self._file.counters["corrupt_control"],
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Commit buffered readings and close the file. Idempotent."""
        if self._closed:
            return
        self.flush()
        self._cancel_timer()
        self._file.close()
        self._closed = True
        self._changed.set()  # wake a waiting next(), which then raises SpoolError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- batches -----------------------------------------------------------------------------
    def _next_control(self) -> Outgoing | None:
        """The oldest control message (unreadable ones are deleted and counted), in flight."""
        found = self._reader.oldest_control()
        if found is None:
            return None
        self._control_id, self._inflight = found
        return self._inflight

    def _next_telemetry(self) -> Outgoing:
        while True:
            lo, hi = self._reader.next_range(self.batch_max_readings)
            batch = SpoolBatch(self._file.counters["next_seq"], lo, hi)
            try:
                with self._file.tx():
                    self._file.set_meta("batch_seq", batch.seq)
                    self._file.set_meta("batch_lo", lo)
                    self._file.set_meta("batch_hi", hi)
                    self._file.bump("next_seq", 1)
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot record a batch in {self.path}: {exc}") from exc
            self._batch = batch
            item = self._telemetry(batch)
            if item.readings:
                return item
            self.ack(item)  # every row of the range was unreadable (counted); try the next

    def _telemetry(self, batch: SpoolBatch) -> Outgoing:
        message = self._reader.load(batch, self.agent_id)
        self._inflight = Outgoing(Channel.TELEMETRY, message, readings=len(message.readings))
        return self._inflight

    # -- writes ------------------------------------------------------------------------------
    def _insert_pending(self) -> int:
        """Insert the buffered readings and enforce the cap (inside a transaction)."""
        count = len(self._pending)
        if count:
            # make room first, so freed pages are reused and the file does not overshoot
            self._enforce_cap(incoming=sum(len(body) + 24 for _, body in self._pending))
            self._db.executemany("INSERT INTO readings (ts, body) VALUES (?, ?)", self._pending)
            self._file.disk_rows += count
            self._enforce_cap()
        return count

    def _after_commit(self) -> None:
        count = len(self._pending)
        self._pending = []
        if count:
            self.flushed_readings += count
            if self.on_flush is not None:
                self.on_flush(self.flushed_readings)

    def _enforce_cap(self, incoming: int = 0) -> None:
        """Drop the oldest readings (never the batch being published) to fit the budget."""
        lo, hi = (self._batch.lo, self._batch.hi) if self._batch else _NO_RANGE
        for _ in range(16):
            used = self.bytes_used
            excess = used + incoming - self._data_budget
            if excess <= 0:
                self._over_cap = False
                return
            per_row = max(1, used // max(1, self._file.disk_rows + self._file.control_rows))
            cur = self._db.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings "
                "WHERE id NOT BETWEEN ? AND ? ORDER BY id LIMIT ?)",
                (lo, hi, excess // per_row + 8),
            )
            if cur.rowcount <= 0:
                break
            self._file.disk_rows -= cur.rowcount
            self._file.bump("dropped_readings", cur.rowcount)
        if not self._over_cap:
            self._over_cap = True
            self.control_over_cap += 1
            log.warning(
                "spool over its cap with nothing left to drop",
                path=str(self.path),
                bytes_used=self.bytes_used,
                max_bytes=self.max_bytes,
                control_waiting=self._file.control_rows,
            )

    def _keep_pending_bounded(self) -> None:
        """While the disk refuses writes, keep the newest readings in memory, within bounds."""
        excess = len(self._pending) - 20 * self.flush_max_readings
        if excess > 0:
            del self._pending[:excess]
            self._file.counters["dropped_readings"] += excess

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to flush later
            if not self._failing:
                self.flush()  # commit now
            return
        self._timer = loop.call_later(self.flush_interval_s, self.flush)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.path} is closed")
