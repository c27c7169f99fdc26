"""Poison readings cost nobody else their data (issue 15 item 2), on real InfluxDB.

NaN, ±Infinity, ``1e999`` and read times the store cannot keep (or that would pin a device's
latest value in the future) are refused reading by reading at the hub; a write the store still
refuses in part is bisected, so that only the refused readings are dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.ingest.writer import Pending, TelemetryWriter
from cloud_hub.storage import StoredReading, open_store
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles.wire import QOS, Channel, topic
from iot_runtime.mqtt import MqttSettings, make_client
from tests.helpers import announce_agent, eventually, hub_settings, running_hub

pytestmark = pytest.mark.integration


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_poison_values_and_times_are_refused_one_by_one_and_others_are_stored(
    mosquitto: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(
        mosquitto,
        tmp_path,
        unique_id,
        storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
    )
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    bad_agent, good_agent = f"bad-{unique_id}", f"good-{unique_id}"
    bad_pole, good_pole = f"pole-bad-{unique_id}", f"pole-good-{unique_id}"
    now = _now_ms() - 60_000
    async with (
        running_hub(settings) as hub,
        make_client(mqtt, f"c-{bad_agent}", persistent_session=False) as bad,
        make_client(mqtt, f"c-{good_agent}", persistent_session=False) as good,
    ):
        await announce_agent(bad, hub.api, bad_agent, bad_pole, retain=False)
        await announce_agent(good, hub.api, good_agent, good_pole, retain=False)
        poison = [
            ("NaN", now + 1),
            ("Infinity", now + 2),
            ("-Infinity", now + 3),
            ("1e999", now + 4),
            ("1.5", 631_152_000_000),  # 1990: a device clock never set
            ("1.5", 4_102_444_800_000),  # 2100: would pin `latest` for 75 years
            ("1.5", 2**53 - 1),  # far beyond what InfluxDB can store
        ]
        lines = [
            f'{{"device_id": "{bad_pole}", "ts": {ts}, "values": {{"power": {value}}}}}'
            for value, ts in poison
        ]
        lines.append(f'{{"device_id": "{bad_pole}", "ts": {now + 10}, "values": {{"power": 2.5}}}}')
        payload = (
            f'{{"v": 1, "agent_id": "{bad_agent}", "seq": 1, "readings": [{", ".join(lines)}]}}'
        )
        good_batch = {
            "v": 1,
            "agent_id": good_agent,
            "seq": 1,
            "readings": [
                {"device_id": good_pole, "ts": now + i, "values": {"power": float(i)}}
                for i in range(50)
            ],
        }
        # interleaved, so that the hub writes them to InfluxDB together
        await bad.publish(topic(bad_agent, Channel.TELEMETRY), payload.encode(), qos=QOS)
        await good.publish(
            topic(good_agent, Channel.TELEMETRY), json.dumps(good_batch).encode(), qos=QOS
        )

        def stored(device: str) -> int:
            body = influx_db.query(
                f"SELECT COUNT(power) FROM smart_pole WHERE device_id = '{device}'"
            )
            series = body["results"][0].get("series", [])
            return int(series[0]["values"][0][1]) if series else 0

        async def all_in() -> bool | None:
            counts = await asyncio.to_thread(lambda: (stored(good_pole), stored(bad_pole)))
            return True if counts == (50, 1) else None

        await eventually(all_in, timeout=20)

        async def dead() -> list[dict[str, Any]] | None:
            response = await hub.api.get("/api/v1/dead-letters", params={"agent_id": bad_agent})
            items: list[dict[str, Any]] = response.json()["items"]
            return items if len(items) >= len(poison) else None

        letters = await eventually(dead, timeout=20)
        reasons = " | ".join(d["reason"] for d in letters)
        assert "finite number" in reasons
        assert "before 2000-01-01" in reasons
        assert "ahead of the hub's clock" in reasons
        good_letters = await hub.api.get("/api/v1/dead-letters", params={"agent_id": good_agent})
        assert good_letters.json()["items"] == []


async def test_a_write_influxdb_refuses_in_part_dead_letters_only_the_refused_reading(
    influx_db: Any,
) -> None:
    store = open_store(InfluxV1Settings(url=influx_db.url, database=influx_db.name))
    await store.start()
    try:
        now = _now_ms() - 60_000
        # `power` becomes an integer field in this shard; a float later is a type conflict
        await store.write([StoredReading("p0", "a0", "smart_pole", now, {"power": 5})])
        conflicting = StoredReading("p0", "a0", "smart_pole", now + 1, {"power": 1.5})
        others = [
            StoredReading(f"p{i}", "a1", "smart_pole", now + i, {"voltage": 230.0 + i})
            for i in range(1, 8)
        ]
        stored: list[StoredReading] = []
        rejected: list[StoredReading] = []
        writer = TelemetryWriter(
            store,
            on_stored=stored.extend,
            on_rejected=lambda readings, why: rejected.extend(readings),
        )
        acked: list[bool] = []
        task = asyncio.create_task(writer.run())
        try:
            await writer.submit(
                Pending([*others[:3], conflicting, *others[3:]], lambda: acked.append(True))
            )

            async def done() -> bool | None:
                return True if acked else None

            await eventually(done, timeout=20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert rejected == [conflicting]
        assert sorted(r.device_id for r in stored) == sorted(r.device_id for r in others)
        body = influx_db.query("SELECT COUNT(voltage) FROM smart_pole")
        assert body["results"][0]["series"][0]["values"][0][1] == len(others)
    finally:
        await store.close()
