"""The InfluxDB 2.x/3.x store (``influxdb-client``) against the 2.x HTTP API.

No 2.x or 3.x server can be installed here, so :class:`InfluxV2Front` serves the 2.x API in
front of the real InfluxDB 1.x the tests run: what the hub writes through ``influxdb-client``
lands in a real InfluxDB and is read back with InfluxQL; Flux answers are the annotated CSV
InfluxDB 2.x documents, parsed by the library's own parser.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage import (
    InfluxV2Store,
    SeriesQuery,
    StorageRejected,
    StorageTooLarge,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.storage.influx_v2 import flux_latest, flux_series
from cloud_hub.storage.settings import InfluxV2Settings
from device_profiles.wire import (
    QOS,
    Channel,
    Reading,
    TelemetryBatch,
    agent_client_id,
    encode,
    topic,
)
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import free_port
from tests.harness.influx_v2_front import InfluxV2Front
from tests.helpers import announce_agent, eventually, running_hub

pytestmark = pytest.mark.integration

T0 = 1_764_583_200_000  # 2025-12-01T10:00:00Z


def _settings(front: InfluxV2Front, bucket: str, **overrides: Any) -> InfluxV2Settings:
    values: dict[str, Any] = {
        "url": front.url,
        "org": front.org,
        "bucket": bucket,
        "token": SecretStr(front.token),
        "query_language": "influxql",
    }
    values.update(overrides)
    return InfluxV2Settings(**values)


@pytest.fixture
async def front(influx_db: Any) -> AsyncIterator[InfluxV2Front]:
    server = await InfluxV2Front(influx_db.url, buckets={influx_db.name}).start()
    yield server
    await server.close()


@pytest.fixture
async def store(front: InfluxV2Front, influx_db: Any) -> AsyncIterator[InfluxV2Store]:
    chosen = InfluxV2Store(_settings(front, influx_db.name))
    await chosen.start()
    yield chosen
    await chosen.close()


def _readings(n: int, device: str = "p1") -> list[StoredReading]:
    return [
        StoredReading(device, "a1", "smart_pole", T0 + i * 1000, {"power": float(i), "dimming": i})
        for i in range(n)
    ]


async def test_writes_land_in_influxdb_with_edge_times_and_types(
    store: InfluxV2Store, influx_db: Any
) -> None:
    await store.write(_readings(5))
    await store.write(_readings(5))  # a replay overwrites itself
    body = influx_db.query("SELECT power, dimming, agent_id FROM smart_pole", epoch="ms")
    rows = body["results"][0]["series"][0]["values"]
    assert rows == [[T0 + i * 1000, float(i), i, "a1"] for i in range(5)]


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (413, {}, StorageTooLarge, None),
        (429, {"Retry-After": "7"}, StorageUnavailable, 7.0),
        (503, {}, StorageUnavailable, None),
        (500, {}, StorageUnavailable, None),
        (400, {}, StorageRejected, None),
        (422, {}, StorageRejected, None),  # 2.x: a partial write, e.g. a field type conflict
    ],
)
async def test_server_answers_map_onto_the_store_errors(
    store: InfluxV2Store,
    front: InfluxV2Front,
    status: int,
    headers: dict[str, str],
    error: type[Exception],
    retry_after: float | None,
) -> None:
    front.fail_next(status, headers=headers, message=f"status {status}")
    with pytest.raises(error, match="too large" if status == 413 else str(status)) as raised:
        await store.write(_readings(3))
    if retry_after is not None:
        assert isinstance(raised.value, StorageUnavailable)
        assert raised.value.retry_after == retry_after
    await store.write(_readings(3))  # the next write goes through


async def test_a_bad_token_or_a_missing_bucket_holds_data_back_instead_of_dropping_it(
    front: InfluxV2Front, influx_db: Any
) -> None:
    for settings in (
        _settings(front, influx_db.name, token=SecretStr("wrong")),
        _settings(front, "no-such-bucket"),
        _settings(front, influx_db.name, org="no-such-org"),
    ):
        store = InfluxV2Store(settings)
        with pytest.raises(StorageUnavailable):
            await store.write(_readings(1))
        await store.close()


async def test_a_server_that_is_down_is_unavailable(influx_db: Any) -> None:
    port = free_port()
    store = InfluxV2Store(
        InfluxV2Settings(url=f"http://127.0.0.1:{port}", org="o", bucket="b", token=SecretStr("t"))
    )
    await store.start()  # logs, does not fail: the writer retries until it is back
    with pytest.raises(StorageUnavailable):
        await store.write(_readings(1))
    with pytest.raises(StorageUnavailable):
        await store.query(SeriesQuery("smart_pole", ("p1",), ("power",), T0, T0 + 1))
    await store.close()


# -- Flux -------------------------------------------------------------------------------------

#: What InfluxDB 2.x answers for ``flux_series`` (annotated CSV, one block per column types).
FLUX_CSV = """#group,false,false,false,false,true,true
#datatype,string,long,dateTime:RFC3339,double,string,string
#default,_result,,,,,
,result,table,_time,_value,_field,device_id
,,0,2025-12-01T10:00:00Z,1.5,power,p1
,,0,2025-12-01T10:00:10.25Z,2.5,power,p1
,,1,2025-12-01T10:00:00Z,7,power,p2

#group,false,false,false,false,true,true
#datatype,string,long,dateTime:RFC3339,boolean,string,string
#default,_result,,,,,
,result,table,_time,_value,_field,device_id
,,2,2025-12-01T10:00:05Z,true,lamp_on,p1

"""


#: What it answers for ``flux_latest`` of p1 (``last()`` of each field's table).
FLUX_LATEST_CSV = """#group,false,false,false,false,true,false
#datatype,string,long,dateTime:RFC3339,double,string,string
#default,_result,,,,,
,result,table,_time,_value,_field,device_id
,,0,2025-12-01T10:00:10.25Z,2.5,power,p1

#group,false,false,false,false,true,false
#datatype,string,long,dateTime:RFC3339,boolean,string,string
#default,_result,,,,,
,result,table,_time,_value,_field,device_id
,,1,2025-12-01T10:00:05Z,true,lamp_on,p1

"""


@pytest.fixture
async def flux_store(front: InfluxV2Front, influx_db: Any) -> AsyncIterator[InfluxV2Store]:
    chosen = InfluxV2Store(_settings(front, influx_db.name, query_language="flux"))
    yield chosen
    await chosen.close()


async def test_flux_queries_and_their_answers(
    flux_store: InfluxV2Store, front: InfluxV2Front, influx_db: Any
) -> None:
    store = flux_store
    front.flux_answer = FLUX_CSV
    found = await store.query(
        SeriesQuery("smart_pole", ("p1", "p2"), ("power", "lamp_on"), T0, T0 + 60_000)
    )
    assert [(s.device_id, s.point, s.values) for s in found] == [
        ("p1", "lamp_on", [(T0 + 5000, True)]),
        ("p1", "power", [(T0, 1.5), (T0 + 10_250, 2.5)]),
        ("p2", "power", [(T0, 7.0)]),
    ]
    [flux] = front.flux_queries
    assert flux == flux_series(
        influx_db.name,
        SeriesQuery("smart_pole", ("p1", "p2"), ("power", "lamp_on"), T0, T0 + 60_000),
    )
    front.flux_answer = FLUX_LATEST_CSV
    latest = await store.latest("p1", "smart_pole", ["power", "lamp_on"])
    assert {k: (v.value, v.ts_ms) for k, v in latest.items()} == {
        "power": (2.5, T0 + 10_250),
        "lamp_on": (True, T0 + 5000),
    }
    front.flux_answer = None  # the server refuses the query: a clear error, not a crash
    with pytest.raises(Exception, match="400"):
        await store.latest("p1", "smart_pole", ["power"])


def test_flux_text_quotes_what_it_embeds_and_windows_like_influxql() -> None:
    query = SeriesQuery(
        "smart_pole", ('p"1', "p$x"), ("power",), T0, T0 + 120_000, 60_000, "mean", 10
    )
    flux = flux_series("iot", query)
    assert 'r.device_id == "p\\"1" or r.device_id == "p\\$x"' in flux
    assert "range(start: 2025-12-01T10:00:00.000Z, stop: 2025-12-01T10:02:00.000Z)" in flux
    assert (
        'aggregateWindow(every: 60000ms, fn: mean, createEmpty: false, timeSrc: "_start")' in flux
    )
    assert flux.index("aggregateWindow") < flux.index("limit(n: 10)")
    latest = flux_latest("iot", "p1", "smart_pole", ["power", "dimming"])
    assert 'r._field == "power" or r._field == "dimming"' in latest
    assert latest.index('group(columns: ["_field"])') < latest.index("last()")


# -- the hub on the 2.x API ---------------------------------------------------------------------


async def test_hub_stores_every_reading_once_through_throttling_and_a_too_large_answer(
    mosquitto: Any, front: InfluxV2Front, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    settings = HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=_settings(front, influx_db.name),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    front.fail_next(429, times=2, headers={"Retry-After": "1"})
    front.fail_next(413)
    front.fail_next(503, times=2)
    stamps = [T0 + i for i in range(300)]

    def stored() -> int:
        body = influx_db.query(
            f"SELECT COUNT(power) FROM smart_pole WHERE device_id = '{device_id}'"
        )
        series = body["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    async def all_stored() -> bool | None:
        return True if await asyncio.to_thread(stored) == len(stamps) else None

    async with running_hub(settings) as hub:
        client = make_client(
            settings.mqtt, agent_client_id(agent_id), persistent_session=True, session_expiry_s=60
        )
        async with client as agent:
            await announce_agent(agent, hub.api, agent_id, device_id)
            for seq in range(30):
                batch = TelemetryBatch(
                    agent_id=agent_id,
                    seq=seq,
                    readings=[
                        Reading(device_id=device_id, ts=ts, values={"power": float(ts % 997)})
                        for ts in stamps[seq * 10 : seq * 10 + 10]
                    ],
                )
                await agent.publish(topic(agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)
            await eventually(all_stored, timeout=60)
            assert front.refused == 5  # every injected failure was met and retried
            latest = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
            assert latest.status_code == 200, latest.text
            await agent.publish(topic(agent_id, Channel.STATE), b"", qos=QOS, retain=True)
    body = influx_db.query(
        f"SELECT power FROM smart_pole WHERE device_id = '{device_id}'", epoch="ms"
    )
    assert [row[0] for row in body["results"][0]["series"][0]["values"]] == stamps
