"""Telemetry queries on every store (real InfluxDB 1.x; InfluxDB 2.x's API through
``influxdb-client`` in front of it, with InfluxQL queries; embedded SQLite): raw ranges,
aggregate windows, several devices and points, limits, idempotent replays."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.storage import (
    InfluxV1Store,
    InfluxV2Store,
    SeriesQuery,
    SqliteStore,
    StoredReading,
    TelemetryStore,
)
from cloud_hub.storage.settings import InfluxV1Settings, InfluxV2Settings, SqliteStoreSettings
from tests.harness.influx_v2_front import InfluxV2Front

pytestmark = pytest.mark.integration

T0 = 29_333_333 * 60_000  # on a whole minute (windows align to the epoch)


@pytest.fixture(params=["influxdb", "influxdb2-api", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TelemetryStore]:
    chosen: TelemetryStore
    front: InfluxV2Front | None = None
    if request.param == "influxdb":
        db: Any = request.getfixturevalue("influx_db")
        chosen = InfluxV1Store(InfluxV1Settings(url=db.url, database=db.name))
    elif request.param == "influxdb2-api":
        db = request.getfixturevalue("influx_db")
        front = await InfluxV2Front(db.url, buckets={db.name}).start()
        chosen = InfluxV2Store(
            InfluxV2Settings(
                url=front.url,
                org=front.org,
                bucket=db.name,
                token=front.token,  # type: ignore[arg-type]
                query_language="influxql",
            )
        )
    else:
        chosen = SqliteStore(SqliteStoreSettings(path=tmp_path / "t.db"))
    await chosen.start()
    readings = [
        StoredReading(
            device,
            "a1",
            "smart_pole",
            T0 + i * 10_000,
            {"power": float(i + k), "lamp_on": i % 2 == 0},
        )
        for k, device in enumerate(["p1", "p2"])
        for i in range(12)  # two minutes, every 10 s
    ]
    await chosen.write(readings)
    await chosen.write(readings[:5])  # a replay changes nothing
    yield chosen
    await chosen.close()
    if front is not None:
        assert front.writes == 2  # both writes went through /api/v2/write
        await front.close()


async def test_raw_range_of_several_devices_and_points(store: TelemetryStore) -> None:
    found = await store.query(
        SeriesQuery("smart_pole", ("p1", "p2"), ("power", "lamp_on"), T0, T0 + 60_000)
    )
    by_key = {(s.device_id, s.point): s.values for s in found}
    assert set(by_key) == {("p1", "power"), ("p1", "lamp_on"), ("p2", "power"), ("p2", "lamp_on")}
    assert by_key[("p1", "power")] == [(T0 + i * 10_000, float(i)) for i in range(6)]
    assert [bool(v) for _, v in by_key[("p2", "lamp_on")]] == [True, False] * 3


@pytest.mark.parametrize(
    ("agg", "first_minute_p1"),
    [("mean", 2.5), ("min", 0.0), ("max", 5.0), ("last", 5.0), ("count", 6)],
)
async def test_aggregate_windows(store: TelemetryStore, agg: str, first_minute_p1: float) -> None:
    found = await store.query(
        SeriesQuery("smart_pole", ("p1",), ("power",), T0, T0 + 120_000, 60_000, agg, 100)  # type: ignore[arg-type]
    )
    [series] = found
    assert [t for t, _ in series.values] == [T0, T0 + 60_000]
    assert series.values[0][1] == pytest.approx(first_minute_p1)


async def test_limit_per_series(store: TelemetryStore) -> None:
    found = await store.query(
        SeriesQuery("smart_pole", ("p1", "p2"), ("power",), T0, T0 + 120_000, limit=3)
    )
    assert [len(s.values) for s in found] == [3, 3]
    assert found[0].values[0][0] == T0  # the oldest first


async def test_latest_values_with_their_times(store: TelemetryStore) -> None:
    latest = await store.latest("p2", "smart_pole", ["power", "lamp_on", "voltage"])
    assert set(latest) == {"power", "lamp_on"}  # no voltage was ever stored
    assert latest["power"].value == pytest.approx(12.0)
    assert latest["power"].ts_ms == T0 + 11 * 10_000
    assert bool(latest["lamp_on"].value) is False
