"""Telemetry in InfluxDB through the 1.x HTTP API: line protocol in, InfluxQL out.

Schema: one measurement per profile; tags ``device_id`` and ``agent_id``; one field per point;
the time is the edge read time in milliseconds. A replayed reading overwrites itself.

The same API is served by InfluxDB 2.x (its v1 compatibility endpoints, with a token and a
DBRP mapping) and by InfluxDB 3 (``database`` = the 3.x database, ``token``; set
``create_database: false``, since both create databases their own way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import structlog

from cloud_hub.storage.base import (
    LatestValue,
    Series,
    SeriesQuery,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.storage.influxql import (
    latest_statement,
    parse_latest,
    parse_series,
    quote_ident,
    raise_for_query,
    series_statement,
    write_error,
)
from cloud_hub.storage.line_protocol import encode_lines
from cloud_hub.storage.settings import InfluxV1Settings

__all__ = ["InfluxV1Store"]

log = structlog.get_logger(__name__)


class InfluxV1Store:
    def __init__(self, settings: InfluxV1Settings) -> None:
        self.settings = settings
        auth = None
        headers = {}
        if settings.token is not None:
            headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        elif settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            auth = httpx.BasicAuth(settings.username, password)
        self._http = httpx.AsyncClient(
            base_url=settings.url.rstrip("/"),
            auth=auth,
            headers=headers,
            timeout=settings.timeout_s,
        )

    async def start(self) -> None:
        if self.settings.create_database:
            await self._query(f"CREATE DATABASE {quote_ident(self.settings.database)}", post=True)

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
        text = response.text[:300]
        if response.status_code == 404 and "database not found" in text:
            if self.settings.create_database:
                await self.start()  # the database was dropped: create it and try again
            raise StorageUnavailable(f"InfluxDB write: {text}", 0.0)
        error = write_error(response.status_code, text, response.headers, len(readings))
        if error is not None:
            raise error  # 400: a partial write (e.g. a field type conflict); the rest was stored

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        if not points:
            return {}
        body = await self._query(latest_statement(device_id, profile, points), epoch="ms")
        return parse_latest(points, body)

    async def query(self, query: SeriesQuery) -> list[Series]:
        return parse_series(await self._query(series_statement(query), epoch="ms"))

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
        body: dict[str, Any] | None = None
        if response.status_code == 200:
            body = response.json()
        raise_for_query(response.status_code, response.text, body)
        assert body is not None
        return body
