"""Telemetry storage backends behind one interface (:class:`TelemetryStore`)."""

from cloud_hub.storage.base import (
    EARLIEST_MS,
    LATEST_MS,
    Aggregate,
    LatestValue,
    Series,
    SeriesQuery,
    StorageError,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
    StoredReading,
    TelemetryStore,
    aggregate_applies,
    typed_value,
)
from cloud_hub.storage.influx_v1 import InfluxV1Store
from cloud_hub.storage.influx_v2 import InfluxV2Store
from cloud_hub.storage.settings import InfluxV1Settings, InfluxV2Settings, StorageSettings
from cloud_hub.storage.sqlite_store import SqliteStore

__all__ = [
    "EARLIEST_MS",
    "LATEST_MS",
    "Aggregate",
    "InfluxV1Store",
    "InfluxV2Store",
    "LatestValue",
    "Series",
    "SeriesQuery",
    "SqliteStore",
    "StorageError",
    "StorageRejected",
    "StorageTooLarge",
    "StorageUnavailable",
    "StoredReading",
    "TelemetryStore",
    "aggregate_applies",
    "open_store",
    "typed_value",
]


def open_store(settings: StorageSettings) -> TelemetryStore:
    if isinstance(settings, InfluxV1Settings):
        return InfluxV1Store(settings)
    if isinstance(settings, InfluxV2Settings):
        return InfluxV2Store(settings)
    return SqliteStore(settings)
