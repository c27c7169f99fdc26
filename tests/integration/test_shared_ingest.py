"""Two hub processes in one MQTT 5 shared-subscription group split the telemetry: each reading
is stored exactly once, and both did part of the work."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles.wire import (
    QOS,
    AgentState,
    Channel,
    DeviceInfo,
    Reading,
    TelemetryBatch,
    agent_client_id,
    encode,
    topic,
)
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import free_port
from tests.helpers import eventually, make_keys, running_hub

pytestmark = pytest.mark.integration


def _readings_total(metrics: str) -> float:
    line = next(x for x in metrics.splitlines() if x.startswith("hub_ingest_readings_total"))
    return float(line.split()[-1])


async def test_two_hubs_split_the_load_and_store_each_reading_once(
    mosquitto: Any, influx_db: Any, pg_url: str, unique_id: str, tmp_path: Path
) -> None:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    keys = await make_keys(pg_url, "admin", "viewer")

    def settings(n: int) -> HubSettings:
        return HubSettings(
            mqtt=mqtt,
            client_id=f"hub{n}-{unique_id}",
            shared_subscription_group=f"ingest-{unique_id}",
            storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
            registry_url=pg_url,
            api=ApiSettings(port=free_port()),
        )

    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    async with contextlib.AsyncExitStack() as stack:
        hubs = [await stack.enter_async_context(running_hub(settings(n), keys)) for n in (1, 2)]
        agent = await stack.enter_async_context(
            make_client(mqtt, agent_client_id(agent_id), persistent_session=False)
        )
        birth = AgentState(
            agent_id=agent_id,
            state="online",
            devices=[DeviceInfo(device_id=device_id, profile="smart_pole")],
        )
        await agent.publish(topic(agent_id, Channel.STATE), encode(birth), qos=QOS, retain=True)

        async def registered() -> bool | None:
            ok = [
                (await h.api.get(f"/api/v1/devices/{device_id}")).status_code == 200 for h in hubs
            ]
            return True if all(ok) else None

        await eventually(registered)
        total = 0
        for seq in range(60):
            batch = TelemetryBatch(
                agent_id=agent_id,
                seq=seq,
                readings=[
                    Reading(
                        device_id=device_id,
                        ts=1_760_000_000_000 + seq * 10 + i,
                        values={"power": 1.0 + i},
                    )
                    for i in range(10)
                ],
            )
            await agent.publish(topic(agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)
            total += 10

        def stored() -> int:
            body = influx_db.query(
                f"SELECT COUNT(power) FROM smart_pole WHERE device_id = '{device_id}'"
            )
            series = body["results"][0].get("series")
            return int(series[0]["values"][0][1]) if series else 0

        async def all_stored() -> bool | None:
            return True if await asyncio.to_thread(stored) == total else None

        await eventually(all_stored)
        counts = [_readings_total((await h.api.get("/metrics")).text) for h in hubs]
        assert sum(counts) == total, counts  # each reading was handled by one hub only
        assert all(c > 0 for c in counts), counts  # and both took part
        await agent.publish(topic(agent_id, Channel.STATE), b"", qos=QOS, retain=True)
