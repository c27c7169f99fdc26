"""The on-disk store-and-forward outbox: what waits to go up survives outages and restarts.

:class:`DiskOutbox` has the interface of the in-memory :class:`~edge_agent.outbox.memory.Outbox`
(``put_reading``, ``put_control``, ``await next()``, ``ack(item)``, ``depth``,
``dropped_readings``) and keeps everything in one SQLite file (WAL mode) in the agent's data
directory. Only a few hundred readings (one flush group and one batch) are ever held in memory,
however long the outage.

Delivery
    A reading is committed to the file before it can be handed out by :meth:`DiskOutbox.next`;
    handing it out in a batch writes the batch's ``seq`` into its row. It is deleted by
    :meth:`DiskOutbox.stored` once the hub confirms it stored the batch, or by
    :meth:`DiskOutbox.ack` where the broker's PUBACK is confirmation enough. A batch the
    broker has (:meth:`DiskOutbox.sent`) waits for the hub's confirmation, at most
    ``window_batches`` at once; one unconfirmed after ``ack_timeout_s`` (doubling up to
    ``ack_timeout_max_s`` while nothing is confirmed), or after :meth:`DiskOutbox.rewind` (a
    reconnect), or after a restart, is handed out again with the *same* ``seq`` and the *same*
    readings, so the hub sees a duplicate as a duplicate. ``seq`` keeps growing across
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
    being published is never cut; readings not yet sent go first, then whole unconfirmed
    batches, oldest first. Control messages are never dropped: if they alone exceed
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
    :mod:`edge_agent.outbox.file` opens the SQLite file (WAL, lock, check, setting a bad one
    aside) and keeps the row counts and counters in step with it; :mod:`edge_agent.outbox.batches`
    reads control messages and telemetry batches back out of it. This module decides what goes
    in, what comes out when, and what is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
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
from edge_agent.outbox.batches import SpoolBatch, SpoolReader
from edge_agent.outbox.file import SCHEMA_VERSION, SpoolError, SpoolFile, Synchronous, spool_files
from edge_agent.outbox.memory import Outgoing, gather_burst

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
_WIRE_MODELS: tuple[type[BaseModel], ...] = MESSAGE_TYPES


def _check_settings(
    *,
    max_bytes: int,
    batch_max_readings: int,
    flush_max_readings: int,
    flush_interval_s: float,
    synchronous: str,
    window_batches: int,
    ack_timeout_s: float,
    ack_timeout_max_s: float,
) -> None:
    if max_bytes < MIN_MAX_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}")
    if not 1 <= batch_max_readings <= MAX_READINGS_PER_BATCH:
        raise ValueError(f"batch_max_readings must be 1..{MAX_READINGS_PER_BATCH}")
    if flush_max_readings < 1 or flush_interval_s <= 0:
        raise ValueError("flush_max_readings must be >= 1 and flush_interval_s > 0")
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
    if window_batches < 1 or not 0 < ack_timeout_s <= ack_timeout_max_s:
        raise ValueError("window_batches must be >= 1 and 0 < ack_timeout_s <= ack_timeout_max_s")


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
        window_batches: int = 16,
        ack_timeout_s: float = 30.0,
        ack_timeout_max_s: float = 300.0,
    ) -> None:
        _check_settings(
            max_bytes=max_bytes,
            batch_max_readings=batch_max_readings,
            flush_max_readings=flush_max_readings,
            flush_interval_s=flush_interval_s,
            synchronous=synchronous,
            window_batches=window_batches,
            ack_timeout_s=ack_timeout_s,
            ack_timeout_max_s=ack_timeout_max_s,
        )
        self.path = Path(path)
        self.agent_id = agent_id
        self.max_bytes = max_bytes
        self.batch_max_readings = batch_max_readings
        self.batch_max_delay_s = batch_max_delay_s
        self.flush_interval_s = flush_interval_s
        self.flush_max_readings = flush_max_readings
        self.synchronous = synchronous
        self.on_flush = on_flush
        self.window_batches = window_batches
        self.ack_timeout_s = ack_timeout_s
        self.ack_timeout_max_s = ack_timeout_max_s
        #: batches handed out again because the hub's acknowledgement did not come in time
        self.resent_batches = 0
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
        self._changed = asyncio.Event()  # anything put, confirmed or closed
        #: what can free a full window or needs sending first: a control message, a stored
        #: acknowledgement, a rewind, closing (not readings: they wait)
        self._unblocked = asyncio.Event()
        self._inflight: Outgoing | None = None
        self._batch: SpoolBatch | None = None  # the telemetry batch handed out, not published
        #: readings per batch handed out and not yet confirmed (the in-flight one included)
        self._batch_rows: dict[int, int] = {}
        #: sent batches waiting for the hub's acknowledgement: seq -> when sent (monotonic;
        #: -inf: send again now), oldest first
        self._unconfirmed: dict[int, float] = {}
        self._timeout = ack_timeout_s
        self._batches_stale = False  # the cap deleted whole batches: recount them
        self._control_id = 0  # the control message handed out and not acked
        self._over_cap = False
        self._failing = False  # the last flush failed (disk full, I/O error): retry on a timer
        self._file = SpoolFile(self.path, synchronous=synchronous, wal_bytes=self._wal_bytes)
        self._db = self._file.db
        self._reader = SpoolReader(self._file, self._models)
        self._load_batches()
        # sent before a restart and not confirmed: send them again first (same seq, readings)
        self._unconfirmed = dict.fromkeys(self._batch_rows, -math.inf)
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
            unconfirmed_batches=len(self._unconfirmed),
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
        self._unblocked.set()

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
        """The next message to publish; the same one again until :meth:`ack` or :meth:`sent`.

        Control messages first; then a sent batch whose acknowledgement is overdue (the same
        ``seq`` and readings); then a new batch, unless ``window_batches`` sent batches are
        waiting for the hub's acknowledgement."""
        self._check_open()
        if self._inflight is not None:
            return self._inflight
        while True:
            if control := self._next_control():
                return control
            if resend := self._next_resend():
                return resend
            if self._unassigned() and len(self._unconfirmed) < self.window_batches:
                # let a burst gather into one message (unless a backlog waits), never past
                # the delay
                await gather_burst(
                    self._changed,
                    self.batch_max_delay_s,
                    full=lambda: (
                        self._unassigned() >= self.batch_max_readings
                        or bool(self._file.control_rows)
                    ),
                    after_wake=self._check_open,
                )
                if control := self._next_control():
                    return control
                while self.flush() == 0 and not self._unassigned_on_disk():
                    # the disk refused the readings: retry later; they stay in memory
                    await asyncio.sleep(self.flush_interval_s)
                    self._check_open()
                if telemetry := self._next_telemetry():
                    return telemetry
                continue
            # with the window full, new readings cannot go: wait for what can unblock it
            full = len(self._unconfirmed) >= self.window_batches
            event = self._unblocked if full else self._changed
            event.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._due_in()):
                    await event.wait()
            self._check_open()

    def ack(self, item: Outgoing) -> None:
        """The broker has the message and that is enough: delete it from the spool."""
        if item is not self._inflight or self._closed:
            return
        batch = self._batch
        try:
            with self._file.tx():
                if batch is not None:
                    cur = self._db.execute("DELETE FROM readings WHERE seq = ?", (batch.seq,))
                else:
                    cur = self._db.execute("DELETE FROM control WHERE id = ?", (self._control_id,))
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot remove a published message from {self.path}: {exc}") from exc
        if batch is not None:
            self._file.disk_rows -= cur.rowcount
            self._batch_rows.pop(batch.seq, None)
            self._unconfirmed.pop(batch.seq, None)
            self._batch = None
        else:
            self._file.control_rows -= cur.rowcount
        self._inflight = None

    def sent(self, item: Outgoing) -> None:
        """The broker has the message; a telemetry batch stays in the spool until the hub
        confirms it stored it (:meth:`stored`), and is sent again if that does not come within
        the acknowledgement timeout. A control message is deleted (as by :meth:`ack`)."""
        if item is not self._inflight or self._closed:
            return
        batch = self._batch
        if batch is None:
            self.ack(item)
            return
        if batch.seq in self._batch_rows:  # not confirmed while it was being published
            self._unconfirmed[batch.seq] = time.monotonic()
        self._batch = None
        self._inflight = None

    def stored(self, seqs: Iterable[int]) -> int:
        """The hub has stored these batches: delete them. Returns how many were waiting
        (unknown or already confirmed sequence numbers are ignored)."""
        self._check_open()
        known = [seq for seq in dict.fromkeys(seqs) if seq in self._batch_rows]
        if not known:
            return 0
        try:
            with self._file.tx():
                cur = self._db.executemany(
                    "DELETE FROM readings WHERE seq = ?", [(seq,) for seq in known]
                )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot remove stored batches from {self.path}: {exc}") from exc
        self._file.disk_rows -= cur.rowcount
        for seq in known:
            self._batch_rows.pop(seq, None)
            self._unconfirmed.pop(seq, None)
        self._timeout = self.ack_timeout_s
        self._changed.set()
        self._unblocked.set()
        return len(known)

    def rewind(self) -> None:
        """Send every unconfirmed batch again now (the uplink reconnected: acknowledgements
        published while it was away are lost)."""
        for seq in self._unconfirmed:
            self._unconfirmed[seq] = -math.inf
        if self._unconfirmed:
            self._changed.set()
            self._unblocked.set()

    @property
    def unconfirmed_batches(self) -> int:
        """Batches sent and waiting for the hub's acknowledgement."""
        return len(self._unconfirmed)

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
        self._unblocked.set()

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

    def _next_telemetry(self) -> Outgoing | None:
        """A new batch of readings not yet in one, in flight; None if there are none."""
        while self._unassigned_on_disk():
            seq = self._file.counters["next_seq"]
            try:
                with self._file.tx():
                    count = self._reader.assign(seq, self.batch_max_readings)
                    self._file.bump("next_seq", 1)
            except sqlite3.Error as exc:
                raise SpoolError(f"cannot record a batch in {self.path}: {exc}") from exc
            if not count:
                self._load_batches()  # the counts were off: trust the file
                return None
            self._batch_rows[seq] = count
            if item := self._load(seq):
                return item
        return None

    def _next_resend(self) -> Outgoing | None:
        """The oldest sent batch whose acknowledgement is overdue, in flight again."""
        while self._unconfirmed:
            seq, at = next(iter(self._unconfirmed.items()))
            if at + self._timeout > time.monotonic():
                return None
            del self._unconfirmed[seq]
            if at != -math.inf:  # timed out (not a reconnect): the hub may be slow, or gone
                self._timeout = min(self.ack_timeout_max_s, 2 * self._timeout)
            if item := self._load(seq):
                self.resent_batches += 1
                return item
        return None

    def _load(self, seq: int) -> Outgoing | None:
        """Batch ``seq`` in flight; None (and the batch forgotten) if none of its readings
        is left or readable."""
        self._batch = SpoolBatch(seq)
        message = self._reader.load(self._batch, self.agent_id)
        if not message.readings:
            self._batch = None
            self._batch_rows.pop(seq, None)
            return None
        self._batch_rows[seq] = len(message.readings)
        self._inflight = Outgoing(Channel.TELEMETRY, message, readings=len(message.readings))
        return self._inflight

    def _due_in(self) -> float | None:
        """Seconds until the oldest unconfirmed batch is overdue; None if there is none."""
        if not self._unconfirmed:
            return None
        at = next(iter(self._unconfirmed.values()))
        return max(0.0, at + self._timeout - time.monotonic())

    def _unassigned_on_disk(self) -> int:
        return self._file.disk_rows - sum(self._batch_rows.values())

    def _unassigned(self) -> int:
        """Readings not yet in a batch (committed or buffered)."""
        return self._unassigned_on_disk() + len(self._pending)

    def _load_batches(self) -> None:
        """Read which batches are handed out and how many readings each has from the file."""
        rows = self._db.execute(
            "SELECT seq, count(*) FROM readings WHERE seq IS NOT NULL GROUP BY seq ORDER BY seq"
        ).fetchall()
        self._batch_rows = {int(seq): int(n) for seq, n in rows}
        self._unconfirmed = {s: at for s, at in self._unconfirmed.items() if s in self._batch_rows}

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
        if self._batches_stale:
            self._batches_stale = False
            self._load_batches()
        count = len(self._pending)
        self._pending = []
        if count:
            self.flushed_readings += count
            if self.on_flush is not None:
                self.on_flush(self.flushed_readings)

    def _enforce_cap(self, incoming: int = 0) -> None:
        """Drop the oldest readings to fit the budget: those not yet sent first, then whole
        unconfirmed batches, oldest first; never the batch being published."""
        inflight = self._batch.seq if self._batch else -1
        victims = [seq for seq in self._unconfirmed if seq != inflight]
        for _ in range(16 + len(victims)):
            used = self.bytes_used
            excess = used + incoming - self._data_budget
            if excess <= 0:
                self._over_cap = False
                return
            per_row = max(1, used // max(1, self._file.disk_rows + self._file.control_rows))
            cur = self._db.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings "
                "WHERE seq IS NULL ORDER BY id LIMIT ?)",
                (excess // per_row + 8,),
            )
            if cur.rowcount <= 0:
                if not victims:
                    break
                cur = self._db.execute("DELETE FROM readings WHERE seq = ?", (victims.pop(0),))
                self._batches_stale = True
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
