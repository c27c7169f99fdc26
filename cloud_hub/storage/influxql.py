"""InfluxQL for the telemetry queries, and the HTTP answers of InfluxDB's write and query APIs.

One place for what every InfluxDB we speak to shares: the statements (InfluxDB 1.x, the v1
compatibility API of 2.x and InfluxDB 3 all answer InfluxQL on ``/query``), how their JSON
results become :class:`~cloud_hub.storage.base.Series`, and how a write's HTTP status maps onto
the store's error tree (the same for ``/write`` and ``/api/v2/write``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_hub.storage.base import (
    LatestValue,
    Series,
    SeriesQuery,
    StorageError,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
)
from iot_runtime.retry_after import parse_retry_after

__all__ = [
    "latest_statement",
    "parse_latest",
    "parse_series",
    "quote_ident",
    "quote_str",
    "raise_for_query",
    "series_statement",
    "write_error",
]

_AGGREGATES = {"mean": "MEAN", "min": "MIN", "max": "MAX", "last": "LAST", "count": "COUNT"}


def write_error(
    status: int, text: str, headers: Mapping[str, str], readings: int
) -> StorageError | None:
    """The store error for a write's HTTP answer (None for success).

    413 → split and retry; 429, 503 and other 5xx → retry later (``Retry-After`` honoured);
    401/403 → unavailable too (a revoked token must hold data back, not drop it); anything
    else (400: a type conflict, a malformed line) → refused for good.
    """
    if status in (200, 204):
        return None
    if status == 413:
        return StorageTooLarge(f"InfluxDB: request too large ({readings} readings)")
    if status in (401, 403):
        return StorageUnavailable(f"InfluxDB refused the credentials: {status} {text}")
    if status in (429, 503) or status >= 500:
        return StorageUnavailable(
            f"InfluxDB write: {status} {text}", parse_retry_after(headers.get("Retry-After"))
        )
    return StorageRejected(f"InfluxDB refused a write: {status} {text}")


def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def latest_statement(device_id: str, profile: str, points: Sequence[str]) -> str:
    """One statement per point (``LAST()`` of several fields in one SELECT loses the times)."""
    where = f"WHERE device_id = {quote_str(device_id)}"
    return ";".join(
        f"SELECT LAST({quote_ident(p)}) FROM {quote_ident(profile)} {where}"  # noqa: S608 - quoted
        for p in points
    )


def parse_latest(points: Sequence[str], body: Mapping[str, Any]) -> dict[str, LatestValue]:
    out: dict[str, LatestValue] = {}
    for point, result in zip(points, body.get("results", []), strict=False):
        for series in result.get("series", []):
            for time_ms, value in series.get("values", []):
                if value is not None:
                    out[point] = LatestValue(value=value, ts_ms=int(time_ms))
    return out


def series_statement(query: SeriesQuery) -> str:
    devices = "|".join(re.escape(d) for d in query.device_ids)
    where = (
        f"WHERE device_id =~ /^({devices})$/ "
        f"AND time >= {query.start_ms}ms AND time < {query.end_ms}ms"
    )
    if query.aggregate is not None and query.window_ms is not None:
        function = _AGGREGATES[query.aggregate]
        fields = ", ".join(
            f"{function}({quote_ident(p)}) AS {quote_ident(p)}" for p in query.points
        )
        group = f"GROUP BY time({query.window_ms}ms), device_id fill(none)"
    else:
        fields = ", ".join(quote_ident(p) for p in query.points)
        group = "GROUP BY device_id"
    return (
        f"SELECT {fields} FROM {quote_ident(query.profile)} {where} {group} "  # noqa: S608 - quoted
        f"ORDER BY time ASC LIMIT {query.limit}"
    )


def parse_series(body: Mapping[str, Any]) -> list[Series]:
    out: list[Series] = []
    for result in body.get("results", []):
        for series in result.get("series", []):
            device_id = series.get("tags", {}).get("device_id", "")
            columns = series["columns"]
            for index, point in enumerate(columns[1:], start=1):
                values = [
                    (int(row[0]), row[index]) for row in series["values"] if row[index] is not None
                ]
                if values:
                    out.append(Series(device_id, point, values))
    return sorted(out, key=lambda s: (s.device_id, s.point))


def raise_for_query(status: int, text: str, body: Mapping[str, Any] | None) -> None:
    """Raise the store error for a failed ``/query`` answer or an error inside its results."""
    if status in (401, 403, 429) or status >= 500:
        raise StorageUnavailable(f"InfluxDB query failed: {status} {text[:300]}")
    if status != 200 or body is None:
        raise StorageError(f"InfluxDB query failed: {status} {text[:300]}")
    for result in body.get("results", []):
        if "error" in result:
            raise StorageError(f"InfluxDB query error: {result['error']}")
