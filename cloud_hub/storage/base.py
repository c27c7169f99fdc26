"""The telemetry store interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from device_profiles import Point, Value

__all__ = [
    "EARLIEST_MS",
    "LATEST_MS",
    "Aggregate",
    "LatestValue",
    "Series",
    "SeriesQuery",
    "StorageError",
    "StorageRejected",
    "StorageTooLarge",
    "StorageUnavailable",
    "StoredReading",
    "TelemetryStore",
    "aggregate_applies",
    "typed_value",
]


class StorageError(RuntimeError):
    """The store could not take or answer a request.

    StorageError
    ├── StorageUnavailable   down, overloaded or slow: retry later (``retry_after`` if told)
    ├── StorageTooLarge      the request was too large: split it and retry the halves
    └── StorageRejected      the data itself was refused: retrying cannot help
    """


class StorageUnavailable(StorageError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StorageTooLarge(StorageError):
    pass


class StorageRejected(StorageError):
    pass


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A validated reading with the tags it is stored under."""

    device_id: str
    agent_id: str
    profile: str
    ts_ms: int
    values: dict[str, Value]


Aggregate = Literal["mean", "min", "max", "last", "count"]
#: The times every store can hold, in ms since the epoch: InfluxDB's (int64 nanoseconds,
#: 1677-09-21T00:12:43.146Z to 2262-04-11T23:47:16.854Z). Queries are clipped to them.
EARLIEST_MS = -9_223_372_036_854
LATEST_MS = 9_223_372_036_854


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    """Values of some points of some devices (all of one profile) over ``[start_ms, end_ms)``;
    raw, or aggregated per ``window_ms`` with ``aggregate``; at most ``limit`` values a series."""

    profile: str
    device_ids: tuple[str, ...]
    points: tuple[str, ...]
    start_ms: int
    end_ms: int
    window_ms: int | None = None
    aggregate: Aggregate | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True)
class Series:
    device_id: str
    point: str
    #: (time in ms, value): the edge read time, or the start of the window
    values: list[tuple[int, Value]]


@dataclass(frozen=True, slots=True)
class LatestValue:
    value: Value
    ts_ms: int


class TelemetryStore(Protocol):
    async def start(self) -> None:
        """Connect and prepare (create the database or tables)."""

    async def close(self) -> None: ...

    async def write(self, readings: Sequence[StoredReading]) -> None:
        """Store readings; writing the same reading again changes nothing (idempotent)."""

    async def query(self, query: SeriesQuery) -> list[Series]:
        """One series per device and point, oldest first (empty ones left out)."""

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        """The newest value of each of ``points`` of a device (absent when it has none)."""


def aggregate_applies(aggregate: Aggregate, data_type: str) -> bool:
    """Whether every store computes ``aggregate`` of a point of ``data_type`` (a profile's):
    ``count`` and ``last`` of any, ``min`` and ``max`` of numbers and booleans, ``mean`` of
    numbers only (InfluxDB averages no booleans and takes no minimum of text)."""
    if aggregate in ("count", "last"):
        return True
    if data_type == "string":
        return False
    return data_type != "bool" or aggregate != "mean"


def typed_value(point: Point, value: Value) -> Value:
    """A stored value as its point's type says (stores keep booleans as 0/1 and whole floats
    as integers)."""
    if point.type == "bool":
        return bool(value)
    if point.is_numeric and not point.is_integral and isinstance(value, int):
        return float(value)
    return value
