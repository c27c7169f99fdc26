"""The embedded telemetry store: one SQLite file, no server (demo and single sites).

One row per (device, point, time); writing the same reading again replaces it, like InfluxDB.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from cloud_hub.storage.base import (
    LatestValue,
    Series,
    SeriesQuery,
    StorageError,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles import Value

__all__ = ["SqliteStore"]

#: SQL for each aggregate; ``last`` relies on SQLite returning the bare column of MAX(ts_ms)
_SQLITE_AGGREGATES = {
    "mean": "AVG(value)",
    "min": "MIN(value)",
    "max": "MAX(value)",
    "count": "COUNT(value)",
    "last": "value",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    device_id TEXT NOT NULL,
    point TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    profile TEXT NOT NULL,
    value ANY,
    PRIMARY KEY (device_id, point, ts_ms)
) WITHOUT ROWID, STRICT;
"""


class SqliteStore:
    def __init__(self, settings: SqliteStoreSettings) -> None:
        self.settings = settings
        self._db: aiosqlite.Connection | None = None

    async def start(self) -> None:
        self.settings.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.settings.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(_SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError("the SQLite store is not started")
        return self._db

    async def write(self, readings: Sequence[StoredReading]) -> None:
        rows = [
            (r.device_id, point, r.ts_ms, r.agent_id, r.profile, _to_sql(value))
            for r in readings
            for point, value in r.values.items()
        ]
        try:
            await self.db.executemany("INSERT OR REPLACE INTO readings VALUES (?,?,?,?,?,?)", rows)
            await self.db.commit()
        except aiosqlite.Error as exc:
            raise StorageUnavailable(f"SQLite write failed: {exc}") from exc

    async def query(self, query: SeriesQuery) -> list[Series]:
        marks_d = ",".join("?" * len(query.device_ids))
        marks_p = ",".join("?" * len(query.points))
        where = f"device_id IN ({marks_d}) AND point IN ({marks_p}) AND ts_ms >= ? AND ts_ms < ?"
        args: list[object] = [*query.device_ids, *query.points, query.start_ms, query.end_ms]
        if query.aggregate is not None and query.window_ms is not None:
            bucket = f"(ts_ms - (ts_ms % {int(query.window_ms)}))"
            value = _SQLITE_AGGREGATES[query.aggregate]
            sql = (
                f"SELECT device_id, point, {bucket} AS t, {value}, MAX(ts_ms) FROM readings "  # noqa: S608 - no user text
                f"WHERE {where} GROUP BY device_id, point, t ORDER BY device_id, point, t"
            )
        else:
            sql = (
                "SELECT device_id, point, ts_ms, value FROM readings "  # noqa: S608 - no user text
                f"WHERE {where} ORDER BY device_id, point, ts_ms"
            )
        cursor = await self.db.execute(sql, args)
        grouped: dict[tuple[str, str], list[tuple[int, Value]]] = {}
        for row in await cursor.fetchall():
            values = grouped.setdefault((row[0], row[1]), [])
            if len(values) < query.limit:
                values.append((int(row[2]), row[3]))
        return [Series(d, p, v) for (d, p), v in grouped.items()]

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        # SQLite returns the bare columns of the row holding MAX(ts_ms)
        cursor = await self.db.execute(
            "SELECT point, value, MAX(ts_ms) FROM readings WHERE device_id = ? GROUP BY point",
            (device_id,),
        )
        wanted = set(points)
        out = {}
        for point, value, ts_ms in await cursor.fetchall():
            if point in wanted:
                out[point] = LatestValue(value=value, ts_ms=int(ts_ms))
        return out


def _to_sql(value: Value) -> int | float | str:
    # SQLite has no boolean: stored as 0/1 and turned back by the profile's type when read
    return int(value) if isinstance(value, bool) else value
