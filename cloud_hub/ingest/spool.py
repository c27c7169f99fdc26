"""The hub's telemetry spool: readings taken off the broker while the store is down.

While the telemetry store is unavailable the hub does not acknowledge messages, and the broker
keeps them; but a broker keeps only so many (Mosquitto's ``max_queued_messages`` is 1,000 by
default and QoS 1 messages past it are dropped), so a long store outage with many agents
would lose readings at the broker. The spool moves them to the hub's own disk instead: after
the store has been unavailable for ``after_s``, the writer appends each batch here (one SQLite
row of JSON, committed with ``synchronous=FULL`` before the messages are acknowledged) and a
drain task writes the oldest chunk to the store once it is back, then deletes it. Replays are
idempotent in the store, so a crash between the store write and the delete costs nothing.

When the spool reaches ``max_bytes`` the writer stops spooling and holds messages back again
(broker backpressure): nothing is ever dropped here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from cloud_hub.storage import StoredReading

__all__ = ["SpoolChunk", "TelemetrySpool"]

log = structlog.get_logger(__name__)


def _encode(readings: Sequence[StoredReading]) -> bytes:
    return json.dumps(
        [[r.device_id, r.agent_id, r.profile, r.ts_ms, r.values] for r in readings],
        separators=(",", ":"),
    ).encode()


def _decode(blob: bytes) -> list[StoredReading]:
    rows: list[list[Any]] = json.loads(blob)
    return [StoredReading(d, a, p, int(t), v) for d, a, p, t, v in rows]


class SpoolChunk:
    __slots__ = ("chunk_id", "readings", "size")

    def __init__(self, chunk_id: int, readings: list[StoredReading], size: int) -> None:
        self.chunk_id = chunk_id
        self.readings = readings
        self.size = size


class TelemetrySpool:
    """A FIFO of reading batches in one SQLite file. ``open()`` before use, ``close()`` after."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.chunks = 0
        self.readings = 0
        self.bytes = 0
        self._db: aiosqlite.Connection | None = None
        self._opening = asyncio.Lock()  # two writes may spool at once: open the file once

    async def open(self) -> None:
        """Open the spool if it holds anything from before; otherwise the file is made only
        when the first batch is spooled (a hub that never saw an outage leaves no file)."""
        if self.path.exists():
            await self._connect()

    async def _connect(self) -> aiosqlite.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(
            "CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " readings INTEGER NOT NULL, payload BLOB NOT NULL)"
        )
        await db.commit()
        async with db.execute(
            "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(LENGTH(payload)), 0)"
            " FROM chunks"
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        self.chunks, self.readings, self.bytes = int(row[0]), int(row[1]), int(row[2])
        self._db = db
        if self.chunks:
            log.info(
                "telemetry spool holds readings from before the restart",
                path=str(self.path),
                readings=self.readings,
            )
        return db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the spool is not open")
        return self._db

    async def append(self, readings: Sequence[StoredReading]) -> None:
        """Append a batch durably (committed to disk when this returns)."""
        payload = _encode(readings)
        async with self._opening:
            db = self._db if self._db is not None else await self._connect()
        await db.execute(
            "INSERT INTO chunks (readings, payload) VALUES (?, ?)", (len(readings), payload)
        )
        await db.commit()
        self.chunks += 1
        self.readings += len(readings)
        self.bytes += len(payload)

    async def oldest(self, count: int = 1) -> list[SpoolChunk]:
        """The ``count`` oldest chunks, oldest first (fewer when the spool holds fewer)."""
        if self._db is None:
            return []
        async with self._db.execute(
            "SELECT id, payload FROM chunks ORDER BY id LIMIT ?", (count,)
        ) as cursor:
            rows = await cursor.fetchall()
        return [SpoolChunk(int(i), _decode(bytes(blob)), len(blob)) for i, blob in rows]

    async def remove(self, chunks: Sequence[SpoolChunk]) -> None:
        """Delete chunks that are in the store now (one transaction)."""
        db = self._conn()
        await db.executemany("DELETE FROM chunks WHERE id = ?", [(c.chunk_id,) for c in chunks])
        await db.commit()
        self.chunks -= len(chunks)
        self.readings -= sum(len(c.readings) for c in chunks)
        self.bytes -= sum(c.size for c in chunks)
