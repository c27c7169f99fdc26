"""Telemetry in InfluxDB 2.x or 3.x through ``influxdb-client``: organisation, bucket, token.

Writes go to ``/api/v2/write`` (served by 2.x and by 3.x) as the same line protocol the 1.x
store sends, with millisecond precision, so the schema is the same: one measurement per
profile, tags ``device_id`` and ``agent_id``, one field per point, the edge read time.

Queries are Flux on 2.x (``query_language: flux``) or InfluxQL on the v1 compatibility
``/query`` endpoint (``influxql``: InfluxDB 3, which has no Flux, or 2.x with a DBRP mapping
of the bucket), reusing the 1.x store's statements and parsing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import aiohttp
import structlog
from influxdb_client.client.flux_table import TableList
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from cloud_hub.storage.base import (
    LatestValue,
    Series,
    SeriesQuery,
    StorageError,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.storage.influx_v1 import InfluxV1Store
from cloud_hub.storage.influxql import write_error
from cloud_hub.storage.line_protocol import encode_lines
from cloud_hub.storage.settings import InfluxV1Settings, InfluxV2Settings
from device_profiles import Value

__all__ = ["InfluxV2Store", "flux_latest", "flux_series"]

log = structlog.get_logger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _flux_str(text: str) -> str:
    """A Flux string literal (``$`` escaped too: ``${`` starts an interpolation)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _flux_time(ts_ms: int) -> str:
    """A Flux time literal (RFC 3339, UTC, milliseconds)."""
    when = _EPOCH + ts_ms * _MS
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _any_of(column: str, values: Sequence[str]) -> str:
    return " or ".join(f"r.{column} == {_flux_str(v)}" for v in values)


def flux_series(bucket: str, query: SeriesQuery) -> str:
    """The Flux of a :class:`SeriesQuery`: one table per device and point, oldest first."""
    lines = [
        f"from(bucket: {_flux_str(bucket)})",
        f"  |> range(start: {_flux_time(query.start_ms)}, stop: {_flux_time(query.end_ms)})",
        f"  |> filter(fn: (r) => r._measurement == {_flux_str(query.profile)})",
        f"  |> filter(fn: (r) => {_any_of('device_id', query.device_ids)})",
        f"  |> filter(fn: (r) => {_any_of('_field', query.points)})",
        '  |> group(columns: ["device_id", "_field"])',
        '  |> sort(columns: ["_time"])',
    ]
    if query.aggregate is not None and query.window_ms is not None:
        lines.append(
            f"  |> aggregateWindow(every: {query.window_ms}ms, fn: {query.aggregate},"
            ' createEmpty: false, timeSrc: "_start")'
        )
    lines.append(f"  |> limit(n: {query.limit})")
    lines.append('  |> keep(columns: ["_time", "_value", "_field", "device_id"])')
    return "\n".join(lines)


def flux_latest(bucket: str, device_id: str, profile: str, points: Sequence[str]) -> str:
    """The Flux of the newest value of each point of one device."""
    return "\n".join(
        [
            f"from(bucket: {_flux_str(bucket)})",
            "  |> range(start: 0)",
            f"  |> filter(fn: (r) => r._measurement == {_flux_str(profile)})",
            f"  |> filter(fn: (r) => r.device_id == {_flux_str(device_id)})",
            f"  |> filter(fn: (r) => {_any_of('_field', points)})",
            '  |> group(columns: ["_field"])',
            '  |> sort(columns: ["_time"])',
            "  |> last()",
            '  |> keep(columns: ["_time", "_value", "_field", "device_id"])',
        ]
    )


def _ms(when: datetime) -> int:
    return (when - _EPOCH) // _MS


def series_from_tables(tables: TableList) -> list[Series]:
    """Flux tables (grouped by device and field) as series."""
    found: dict[tuple[str, str], list[tuple[int, Value]]] = {}
    for table in tables:
        for record in table.records:
            values = record.values
            value = values.get("_value")
            if value is None:
                continue
            key = (str(values.get("device_id", "")), str(values.get("_field")))
            found.setdefault(key, []).append((_ms(values["_time"]), value))
    return [Series(device, point, values) for (device, point), values in sorted(found.items())]


def _headers(exc: ApiException) -> Mapping[str, str]:
    headers = exc.headers
    return headers if headers is not None else {}


def _body_text(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        return body.decode("utf-8", "replace")[:300]
    return str(body or exc.reason or "")[:300]


class InfluxV2Store:
    def __init__(self, settings: InfluxV2Settings) -> None:
        self.settings = settings
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None
        self._influxql: InfluxV1Store | None = None
        if settings.query_language == "influxql":
            self._influxql = InfluxV1Store(
                InfluxV1Settings(
                    url=settings.url,
                    database=settings.bucket,
                    token=settings.token,
                    create_database=False,
                    timeout_s=settings.timeout_s,
                )
            )

    def _api(self) -> tuple[InfluxDBClientAsync, WriteApiAsync]:
        # the client's aiohttp session belongs to the running loop: make it on first use
        if self._client is None or self._write_api is None:
            self._client = InfluxDBClientAsync(
                url=self.settings.url,
                token=self.settings.token.get_secret_value(),
                org=self.settings.org,
                timeout=int(self.settings.timeout_s * 1000),
            )
            self._write_api = self._client.write_api()
        return self._client, self._write_api

    async def start(self) -> None:
        client, _ = self._api()
        try:
            reachable = await client.ping()
        except (aiohttp.ClientError, TimeoutError) as exc:
            reachable = False
            log.warning("InfluxDB not reachable yet", url=self.settings.url, error=repr(exc))
        if reachable:
            log.info("InfluxDB reachable", url=self.settings.url, bucket=self.settings.bucket)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = self._write_api = None
        if self._influxql is not None:
            await self._influxql.close()

    async def write(self, readings: Sequence[StoredReading]) -> None:
        if not readings:
            return
        _, write_api = self._api()
        try:
            await write_api.write(
                bucket=self.settings.bucket,
                org=self.settings.org,
                record=encode_lines(readings),
                write_precision=cast(WritePrecision, WritePrecision.MS),
            )
        except ApiException as exc:
            status, text = int(exc.status or 0), _body_text(exc)
            if status == 404:  # no such bucket or organisation: hold the data, don't drop it
                raise StorageUnavailable(f"InfluxDB write: 404 {text}") from exc
            error = write_error(status, text, _headers(exc), len(readings))
            if error is None:
                return
            raise error from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageUnavailable(f"InfluxDB write failed: {exc!r}") from exc

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        if not points:
            return {}
        if self._influxql is not None:
            return await self._influxql.latest(device_id, profile, points)
        flux = flux_latest(self.settings.bucket, device_id, profile, points)
        return {
            s.point: LatestValue(value=s.values[-1][1], ts_ms=s.values[-1][0])
            for s in await self._flux(flux)
            if s.values and s.device_id == device_id
        }

    async def query(self, query: SeriesQuery) -> list[Series]:
        if self._influxql is not None:
            return await self._influxql.query(query)
        return await self._flux(flux_series(self.settings.bucket, query))

    async def _flux(self, flux: str) -> list[Series]:
        client, _ = self._api()
        try:
            tables = await client.query_api().query(flux, org=self.settings.org)
        except ApiException as exc:
            status = int(exc.status or 0)
            text = f"InfluxDB query failed: {status} {_body_text(exc)}"
            if status in (401, 403, 429) or status >= 500:
                raise StorageUnavailable(text) from exc
            raise StorageError(text) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise StorageUnavailable(f"InfluxDB query failed: {exc!r}") from exc
        return series_from_tables(tables)
