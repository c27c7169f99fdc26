"""Telemetry in InfluxDB through the 1.x HTTP API: line protocol in, InfluxQL out.

Schema: one measurement per profile; tags ``device_id`` and ``agent_id``; one field per point;
the time is the edge read time in milliseconds. A replayed reading overwrites itself.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Sequence
from typing import Any

import httpx
import structlog

from cloud_hub.settings import InfluxV1Settings
from cloud_hub.storage.base import (
    LatestValue,
    Series,
    SeriesQuery,
    StorageError,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.storage.line_protocol import encode_lines

__all__ = ["InfluxV1Store"]

log = structlog.get_logger(__name__)

_INFLUX_AGGREGATES = {"mean": "MEAN", "min": "MIN", "max": "MAX", "last": "LAST", "count": "COUNT"}


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _quote_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxV1Store:
    def __init__(self, settings: InfluxV1Settings) -> None:
        self.settings = settings
        auth = None
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            auth = httpx.BasicAuth(settings.username, password)
        self._http = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"), auth=auth, timeout=settings.timeout_s
        )

    async def start(self) -> None:
        if self.settings.create_database:
            await self._query(f"CREATE DATABASE {_quote_ident(self.settings.database)}", post=True)

    async def close(self) -> None:
        await self._http.aclose()

    async def write(self, readings: Sequence[StoredReading]) -> None:
        if not readings:
            return
        try:
            response = await self._http.post(
                "/write",
                params={"db": self.settings.database, "precision": "ms"},
                content=encode_lines(readings),
            )
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"InfluxDB write failed: {exc!r}") from exc
        status, text = response.status_code, response.text[:300]
        if status == 204:
            return
        if status == 413:
            raise StorageTooLarge(f"InfluxDB: request too large ({len(readings)} readings)")
        if status in (429, 503) or status >= 500:
            raise StorageUnavailable(
                f"InfluxDB write: {status} {text}",
                _retry_after(response.headers.get("Retry-After")),
            )
        if status == 404 and "database not found" in text:
            await self.start()  # the database was dropped: create it and try again
            raise StorageUnavailable(f"InfluxDB write: {text}", 0.0)
        # 400: a partial write (e.g. a field type conflict); the valid points were stored
        raise StorageRejected(f"InfluxDB refused a write: {status} {text}")

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        # LAST() of several fields in one SELECT loses the times, so one statement per point
        where = f"WHERE device_id = {_quote_str(device_id)}"
        statements = [
            f"SELECT LAST({_quote_ident(p)}) FROM {_quote_ident(profile)} {where}"  # noqa: S608 - quoted
            for p in points
        ]
        if not statements:
            return {}
        body = await self._query(";".join(statements), epoch="ms")
        out: dict[str, LatestValue] = {}
        for point, result in zip(points, body.get("results", []), strict=False):
            for series in result.get("series", []):
                for time_ms, value in series.get("values", []):
                    if value is not None:
                        out[point] = LatestValue(value=value, ts_ms=int(time_ms))
        return out

    async def query(self, query: SeriesQuery) -> list[Series]:
        devices = "|".join(re.escape(d) for d in query.device_ids)
        where = (
            f"WHERE device_id =~ /^({devices})$/ "
            f"AND time >= {query.start_ms}ms AND time < {query.end_ms}ms"
        )
        if query.aggregate is not None and query.window_ms is not None:
            function = _INFLUX_AGGREGATES[query.aggregate]
            fields = ", ".join(
                f"{function}({_quote_ident(p)}) AS {_quote_ident(p)}" for p in query.points
            )
            group = f"GROUP BY time({query.window_ms}ms), device_id fill(none)"
        else:
            fields = ", ".join(_quote_ident(p) for p in query.points)
            group = "GROUP BY device_id"
        statement = (
            f"SELECT {fields} FROM {_quote_ident(query.profile)} {where} {group} "  # noqa: S608 - quoted
            f"ORDER BY time ASC LIMIT {query.limit}"
        )
        body = await self._query(statement, epoch="ms")
        out: list[Series] = []
        for result in body.get("results", []):
            for series in result.get("series", []):
                device_id = series.get("tags", {}).get("device_id", "")
                columns = series["columns"]
                for index, point in enumerate(columns[1:], start=1):
                    values = [
                        (int(row[0]), row[index])
                        for row in series["values"]
                        if row[index] is not None
                    ]
                    if values:
                        out.append(Series(device_id, point, values))
        return sorted(out, key=lambda s: (s.device_id, s.point))

    async def _query(
        self, q: str, *, post: bool = False, epoch: str | None = None
    ) -> dict[str, Any]:
        params = {"db": self.settings.database, "q": q}
        if epoch:
            params["epoch"] = epoch
        try:
            if post:
                response = await self._http.post("/query", params=params)
            else:
                response = await self._http.get("/query", params=params)
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"InfluxDB query failed: {exc!r}") from exc
        if response.status_code != 200:
            raise StorageError(
                f"InfluxDB query failed: {response.status_code} {response.text[:300]}"
            )
        body: dict[str, Any] = response.json()
        for result in body.get("results", []):
            if "error" in result:
                raise StorageError(f"InfluxDB query error: {result['error']}")
        return body
