"""``GET /api/v1/telemetry`` on odd but valid queries (issue 15, item 7), against the real
stores: InfluxDB 1.x and the embedded SQLite store.

An aggregate over all points (the default) aggregates the points it applies to; one that
cannot be aggregated so, asked for by name, is a 422 saying why. Ranges reaching past what a
store can hold (InfluxDB: 1677 to 2262) answer the data there is, not a 500.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.storage import InfluxV1Store, SqliteStore, StoredReading, TelemetryStore
from cloud_hub.storage.settings import InfluxV1Settings, SqliteStoreSettings
from iot_runtime.mqtt import MqttSettings, make_client
from tests.helpers import announce_agent, hub_settings, running_hub

pytestmark = pytest.mark.integration

T0 = 29_333_333 * 60_000  # 2025-10-09T08:53Z, on a whole minute
MINUTE = 60_000


@dataclass
class Queried:
    api: httpx.AsyncClient
    device_id: str

    async def get(self, **params: Any) -> httpx.Response:
        return await self.api.get(
            "/api/v1/telemetry", params={"device_id": self.device_id, **params}
        )


@pytest.fixture(params=["influxdb", "sqlite"])
async def telemetry(
    request: pytest.FixtureRequest, mosquitto: Any, tmp_path: Path, unique_id: str
) -> AsyncIterator[Queried]:
    """A hub on the store, with one pole whose readings (two minutes, every 10 s) are in it."""
    storage: InfluxV1Settings | SqliteStoreSettings
    if request.param == "influxdb":
        db: Any = request.getfixturevalue("influx_db")
        storage = InfluxV1Settings(url=db.url, database=db.name)
    else:
        storage = SqliteStoreSettings(path=tmp_path / "telemetry.db")
    settings = hub_settings(mosquitto, tmp_path, unique_id, storage=storage)
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(settings))
        mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
        agent = await stack.enter_async_context(
            make_client(mqtt, f"agent-{unique_id}", persistent_session=False)
        )
        await announce_agent(agent, hub.api, agent_id, device_id, retain=False)
        store: TelemetryStore = (
            InfluxV1Store(storage)
            if isinstance(storage, InfluxV1Settings)
            else SqliteStore(storage)
        )
        await store.start()
        await store.write(
            [
                StoredReading(
                    device_id,
                    agent_id,
                    "smart_pole",
                    T0 + i * 10_000,
                    {"power": 100 + i, "lamp_on": i % 2 == 0, "illuminance": 0.5 * i},
                )
                for i in range(12)
            ]
        )
        await store.close()
        yield Queried(hub.api, device_id)


def _series(response: httpx.Response) -> dict[str, list[list[Any]]]:
    assert response.status_code == 200, response.text
    return {s["point"]: s["values"] for s in response.json()["series"]}


START, END = "2025-10-09T08:30:00Z", "2025-10-09T09:30:00+00:00"


async def test_an_aggregate_over_all_points_aggregates_those_it_applies_to(
    telemetry: Queried,
) -> None:
    mean = _series(await telemetry.get(start=START, end=END, window_s=60, agg="mean"))
    assert set(mean) == {"power", "illuminance"}  # not lamp_on: InfluxDB averages no booleans
    assert mean["power"] == [[T0, pytest.approx(102.5)], [T0 + MINUTE, pytest.approx(108.5)]]
    # min and max of on/off: off (on) at some time in the window; booleans stay booleans
    low = _series(await telemetry.get(start=START, end=END, window_s=60, agg="min"))
    high = _series(await telemetry.get(start=START, end=END, window_s=60, agg="max"))
    assert set(low) == set(high) == {"power", "illuminance", "lamp_on"}
    assert [v for _, v in low["lamp_on"]] == [False, False]
    assert [v for _, v in high["lamp_on"]] == [True, True]
    assert high["power"] == [[T0, 105], [T0 + MINUTE, 111]]
    last = _series(await telemetry.get(start=START, end=END, window_s=60, agg="last"))
    assert last["lamp_on"] == [[T0, False], [T0 + MINUTE, False]]
    assert last["power"] == [[T0, 105], [T0 + MINUTE, 111]]
    count = _series(await telemetry.get(start=START, end=END, window_s=60, agg="count"))
    assert count["lamp_on"] == [[T0, 6], [T0 + MINUTE, 6]]


async def test_a_mean_of_an_on_off_point_is_invalid(telemetry: Queried) -> None:
    response = await telemetry.get(
        start=START, end=END, window_s=60, agg="mean", point=["power", "lamp_on"]
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "'mean' applies to numbers; 'lamp_on' is bool" in response.json()["detail"]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (START, "9999-12-31T23:59:59.999999Z"),
        ("1000-01-01T00:00:00Z", END),
        ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59+00:00"),
        ("1677-09-21T00:12:43Z", "2262-04-11T23:47:17Z"),  # just past InfluxDB's ends
    ],
)
async def test_a_range_past_what_a_store_holds_answers_the_data_there_is(
    telemetry: Queried, start: str, end: str
) -> None:
    raw = _series(await telemetry.get(start=start, end=end, point="power"))
    assert [t for t, _ in raw["power"]] == [T0 + i * 10_000 for i in range(12)]
    windowed = _series(
        await telemetry.get(start=start, end=end, point="power", window_s=86400, agg="count")
    )
    assert windowed["power"] == [[T0 - T0 % 86_400_000, 12]]


async def test_a_range_wholly_outside_what_a_store_holds_is_empty(telemetry: Queried) -> None:
    for params in (
        {"start": "9000-01-01T00:00:00Z", "end": "9999-01-01T00:00:00Z"},
        {"end": "9999-12-31T23:59:59Z"},  # the default: the hour before
        {
            "start": "0001-01-01T00:00:00Z",
            "end": "1000-01-01T00:00:00Z",
            "window_s": 60,
            "agg": "mean",
        },
    ):
        response = await telemetry.get(**params)
        assert response.status_code == 200, (params, response.text)
        assert response.json()["series"] == []
