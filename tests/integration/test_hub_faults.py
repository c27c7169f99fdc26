"""Fault injection on the hub's path: InfluxDB down during ingest, hub restarted mid-command."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings, SqliteStoreSettings
from device_profiles.wire import (
    QOS,
    Channel,
    Reading,
    TelemetryBatch,
    agent_client_id,
    encode,
    topic,
)
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import free_port
from tests.harness.process import HarnessError
from tests.helpers import announce_agent, eventually, make_keys, running_hub

pytestmark = pytest.mark.integration

#: The issue asks for a 60 s outage; HUB_OUTAGE_TEST_S shortens it while developing.
OUTAGE_S = float(os.environ.get("HUB_OUTAGE_TEST_S", "60"))
BASE_TS = 1_760_000_000_000


def _hub_settings(mosquitto: Any, tmp_path: Path, unique_id: str, storage: Any) -> HubSettings:
    return HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=storage,
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )


async def test_no_reading_is_lost_or_duplicated_while_influxdb_is_down(
    mosquitto: Any, influxdb_private: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    settings = _hub_settings(
        mosquitto, tmp_path, unique_id, InfluxV1Settings(url=influxdb_private.url, database="iot")
    )
    mqtt = settings.mqtt
    published: list[int] = []
    seq = 0

    async def publish_batch(agent: Any, readings: int = 10) -> None:
        nonlocal seq
        stamps = [BASE_TS + len(published) + i for i in range(readings)]
        batch = TelemetryBatch(
            agent_id=agent_id,
            seq=seq,
            readings=[
                Reading(
                    device_id=device_id,
                    ts=ts,
                    values={"power": float(ts % 1000) / 10, "dimming": 50},
                )
                for ts in stamps
            ],
        )
        await agent.publish(topic(agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)
        published.extend(stamps)
        seq += 1

    def stored_count() -> int:
        body = influxdb_private.query(
            "iot", f"SELECT COUNT(power) FROM smart_pole WHERE device_id = '{device_id}'"
        )
        series = body["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    async def all_stored() -> bool | None:
        return True if await asyncio.to_thread(stored_count) == len(published) else None

    async with running_hub(settings) as hub:
        agent_client = make_client(
            mqtt, agent_client_id(agent_id), persistent_session=True, session_expiry_s=600
        )
        async with agent_client as agent:
            await announce_agent(agent, hub.api, agent_id, device_id)
            for _ in range(20):
                await publish_batch(agent)
            await eventually(all_stored)

            await asyncio.to_thread(influxdb_private.stop)
            loop = asyncio.get_running_loop()
            outage_end = loop.time() + OUTAGE_S
            while loop.time() < outage_end:
                await publish_batch(agent)
                await asyncio.sleep(0.25)  # the agents' publishing pace, not a wait for a condition
            during_outage = len(published) - 200
            await asyncio.to_thread(influxdb_private.start)
            for _ in range(20):
                await publish_batch(agent)
            await eventually(all_stored, timeout=90)

        body = await asyncio.to_thread(
            influxdb_private.query,
            "iot",
            f"SELECT power FROM smart_pole WHERE device_id = '{device_id}'",
            epoch="ms",
        )
        times = [row[0] for row in body["results"][0]["series"][0]["values"]]
        assert sorted(times) == sorted(published), "every reading exactly once, at its own time"
        assert len(set(times)) == len(times)
        assert during_outage > 0
        metrics = (await hub.api.get("/metrics")).text
        retries = next(
            line for line in metrics.splitlines() if line.startswith("hub_write_retries_total")
        )
        assert float(retries.split()[-1]) > 0


async def test_commands_in_flight_survive_a_hub_restart(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    device_id = f"pole-{unique_id}"
    settings = _hub_settings(
        mosquitto, tmp_path, unique_id, SqliteStoreSettings(path=tmp_path / "telemetry.db")
    )
    keys = await make_keys(settings.registry_url, "admin")
    async with run_smart_pole(seed=3, port=0, tick_s=None) as sim:
        agent_settings = AgentSettings(
            agent_id=f"agent-{unique_id}",
            mqtt=settings.mqtt,
            devices=[
                DeviceConfig(
                    device_id=device_id,
                    profile="smart_pole",
                    connection=ModbusTcpSettings(host=sim.host, port=sim.port),
                    poll_interval_s=0.5,
                )
            ],
            data_dir=tmp_path / "agent",
        )

        async with running_hub(settings, keys) as hub:
            agent = asyncio.create_task(Agent(agent_settings).run())

            async def online() -> bool | None:
                response = await hub.api.get(f"/api/v1/devices/{device_id}")
                return True if response.status_code == 200 else None

            await eventually(online)
            agent.cancel()
            await asyncio.gather(agent, return_exceptions=True)
            # the agent is away: the commands wait in its persistent session at the broker
            ids = []
            for body in ({"name": "set_dimming", "params": {"level": 30}}, {"name": "lamp_off"}):
                response = await hub.api.post(f"/api/v1/devices/{device_id}/commands", json=body)
                assert response.status_code == 202, response.text
                ids.append(response.json()["command_id"])
            for command_id in ids:
                status = (await hub.api.get(f"/api/v1/commands/{command_id}")).json()["status"]
                assert status == "sent"
        # the hub is down; the agent returns, executes, and its results wait for the hub
        agent = asyncio.create_task(Agent(agent_settings).run())
        try:

            async def executed() -> bool | None:
                return True if len(sim.writes) == 3 else None

            await eventually(executed)
            assert [(w.point, w.value) for w in sim.writes] == [
                ("dimming", 30),
                ("lamp_on", True),
                ("lamp_on", False),
            ]
            async with running_hub(settings, keys) as hub:

                async def all_done() -> list[str] | None:
                    statuses = [
                        (await hub.api.get(f"/api/v1/commands/{command_id}")).json()["status"]
                        for command_id in ids
                    ]
                    return statuses if all(s == "succeeded" for s in statuses) else None

                assert await eventually(all_done) == ["succeeded", "succeeded"]
        finally:
            agent.cancel()
            await asyncio.gather(agent, return_exceptions=True)


async def test_the_hub_starts_while_influxdb_is_down_spools_and_drains_when_it_returns(
    mosquitto: Any, influxdb_private: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = _hub_settings(
        mosquitto, tmp_path, unique_id, InfluxV1Settings(url=influxdb_private.url, database="up")
    )
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    await asyncio.to_thread(influxdb_private.stop)
    try:
        async with running_hub(settings) as hub:  # a supervisor's restart loop would end here

            async def not_ready_for_the_store() -> bool | None:
                ready = await hub.api.get("/readyz")
                assert ready.status_code == 503
                return True if "telemetry store is unavailable" in ready.json()["detail"] else None

            await eventually(not_ready_for_the_store, timeout=20)
            client = make_client(settings.mqtt, agent_client_id(agent_id), persistent_session=False)
            async with client as agent:
                await announce_agent(agent, hub.api, agent_id, device_id, retain=False)
                stamps = [BASE_TS + i for i in range(50)]
                batch = TelemetryBatch(
                    agent_id=agent_id,
                    seq=0,
                    readings=[
                        Reading(device_id=device_id, ts=ts, values={"power": 1.5}) for ts in stamps
                    ],
                )
                await agent.publish(topic(agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)

                async def spooled() -> bool | None:
                    metrics = (await hub.api.get("/metrics")).text
                    line = next(
                        x for x in metrics.splitlines() if x.startswith("hub_spool_readings")
                    )
                    return True if float(line.split()[-1]) == len(stamps) else None

                await eventually(spooled, timeout=30)
                await asyncio.to_thread(influxdb_private.start)

                def stored() -> int:
                    try:
                        body = influxdb_private.query("up", "SELECT COUNT(power) FROM smart_pole")
                    except HarnessError:  # the hub has not created its database yet
                        return 0
                    series = body["results"][0].get("series")
                    return int(series[0]["values"][0][1]) if series else 0

                async def drained() -> bool | None:
                    return True if await asyncio.to_thread(stored) == len(stamps) else None

                await eventually(drained, timeout=60)

                async def is_ready() -> bool | None:
                    return True if (await hub.api.get("/readyz")).status_code == 200 else None

                await eventually(is_ready, timeout=30)
    finally:
        await asyncio.to_thread(influxdb_private.start)
