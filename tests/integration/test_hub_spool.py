"""The hub's disk spool against a broker that keeps only a few messages per client.

Mosquitto keeps at most ``max_queued_messages`` (1,000 by default) for a client that has not
acknowledged what it was sent, and drops QoS 1 messages past that ("Outgoing messages are being
dropped"). The hub holds acknowledgements while the telemetry store is down, so a long outage
with many agents would lose readings at the broker. Both tests below run the same load
through a broker that keeps 20: without the spool, the broker drops; with it, every reading
is stored exactly once, across a hub restart in the middle of the outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.ingest.settings import SpoolSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
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
from tests.helpers import RunningHub, announce_agent, eventually, running_hub

pytestmark = pytest.mark.integration

BASE_TS = 1_762_000_000_000
BATCHES, PER_BATCH = 150, 10
SMALL_BROKER = "max_queued_messages 20\nmax_inflight_messages 5\n"
DROPPED = "Outgoing messages are being dropped"


def _settings(broker: Any, influx: Any, tmp_path: Path, unique_id: str, spool: bool) -> HubSettings:
    return HubSettings(
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        client_id=f"hub-{unique_id}",
        storage=InfluxV1Settings(url=influx.url, database="iot"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        spool=SpoolSettings(enabled=spool, path=tmp_path / "spool.db", after_s=0.0),
    )


async def _metric(hub: RunningHub, name: str) -> float:
    text = (await hub.api.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def _register_and_publish(
    hub: RunningHub, settings: HubSettings, agent_id: str, device_id: str, before: Callable[[], Any]
) -> None:
    """Register a pole, run ``before`` (stop the store), then publish the whole load."""
    client = make_client(
        settings.mqtt, agent_client_id(agent_id), persistent_session=True, session_expiry_s=600
    )
    async with client as agent:
        await announce_agent(agent, hub.api, agent_id, device_id)
        await asyncio.to_thread(before)
        for seq in range(BATCHES):
            batch = TelemetryBatch(
                agent_id=agent_id,
                seq=seq,
                readings=[
                    Reading(
                        device_id=device_id, ts=BASE_TS + seq * PER_BATCH + i, values={"power": 1.5}
                    )
                    for i in range(PER_BATCH)
                ],
            )
            await agent.publish(topic(agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)
            await asyncio.sleep(0.02)  # the agents' publishing pace, not a wait for a condition
        await agent.publish(topic(agent_id, Channel.STATE), b"", qos=QOS, retain=True)


def _stored(influx: Any, device_id: str) -> list[int]:
    body = influx.query(
        "iot", f"SELECT power FROM smart_pole WHERE device_id = '{device_id}'", epoch="ms"
    )
    series = body["results"][0].get("series")
    return [int(row[0]) for row in series[0]["values"]] if series else []


async def test_without_the_spool_a_long_outage_overflows_the_broker(
    mosquitto_factory: Callable[..., Any], influxdb_private: Any, tmp_path: Path, unique_id: str
) -> None:
    broker = mosquitto_factory(extra_config=SMALL_BROKER)
    settings = _settings(broker, influxdb_private, tmp_path, unique_id, spool=False)
    async with running_hub(settings) as hub:
        await _register_and_publish(
            hub, settings, f"agent-{unique_id}", f"pole-{unique_id}", influxdb_private.stop
        )

        async def dropped() -> bool | None:
            return True if DROPPED in broker.log_tail(400) else None

        await eventually(dropped)  # what the spool is for
    influxdb_private.start()


async def test_with_the_spool_a_long_outage_and_a_hub_restart_lose_nothing(
    mosquitto_factory: Callable[..., Any], influxdb_private: Any, tmp_path: Path, unique_id: str
) -> None:
    broker = mosquitto_factory(extra_config=SMALL_BROKER)
    settings = _settings(broker, influxdb_private, tmp_path, unique_id, spool=True)
    device_id = f"pole-{unique_id}"
    total = BATCHES * PER_BATCH
    async with running_hub(settings) as hub:
        await _register_and_publish(
            hub, settings, f"agent-{unique_id}", device_id, influxdb_private.stop
        )

        async def all_spooled() -> bool | None:
            spooled = await _metric(hub, "hub_spool_readings")
            return True if spooled == total else None

        await eventually(all_spooled, timeout=60)
    assert DROPPED not in broker.log_tail(400)
    # the hub stopped with everything in its spool; the store comes back; a new hub drains it
    await asyncio.to_thread(influxdb_private.start)
    settings.api.port = free_port()
    async with running_hub(settings) as hub:

        async def all_stored() -> bool | None:
            return (
                True
                if len(await asyncio.to_thread(_stored, influxdb_private, device_id)) == total
                else None
            )

        await eventually(all_stored, timeout=60)
        assert await _metric(hub, "hub_spool_readings") == 0
    stamps = await asyncio.to_thread(_stored, influxdb_private, device_id)
    assert stamps == [BASE_TS + i for i in range(total)]  # each once, none lost
