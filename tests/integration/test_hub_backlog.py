"""The hub comes back to a backlog of more than 10,000 queued telemetry messages (issue 19).

The hub is stopped while four agents publish; its persistent session keeps their messages at
the broker, which floods them all at the hub when it reconnects. The hub's MQTT client used to
hold at most 10,000 received messages and discard the rest with a warning ("Message queue is
full. Discarding message."); a discarded message was never acknowledged, so never stored until
the next restart. Now the client stops reading the socket at its high watermark (the broker
holds the rest) and nothing is discarded: every reading is stored exactly once.

The drain rate is printed next to the live ingest rate measured in the same run (run with
``-s`` to see them); ``bench/hub_backlog.py`` measures the same with InfluxDB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.ingest.agent_limits import AgentLimitSettings
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles.wire import QOS, Channel, Reading, TelemetryBatch, encode, topic
from iot_runtime.mqtt import (
    Client,
    InboundOverflow,
    InboundStats,
    InboundWindow,
    MqttSettings,
    ack,
    make_client,
)
from tests.harness import InfluxDatabase, MosquittoServer
from tests.helpers import announce_agent, eventually, hub_settings, running_hub

pytestmark = pytest.mark.integration

AGENTS = 4
LIVE_BATCHES = 750  # per agent, with the hub running
BACKLOG_BATCHES = 6_000  # per agent, with the hub stopped: 24,000 queued messages in all
READINGS_PER_BATCH = 2
BASE_TS = 1_760_000_000_000
#: deep queues and a wide in-flight window, as docs/operations.md advises for a hub's session
BROKER = "max_queued_messages 200000\nmax_inflight_messages 1000\n"


class Agent:
    """A raw MQTT publisher acting as an edge agent with one device."""

    def __init__(self, client: Client, agent_id: str, device_id: str) -> None:
        self.client = client
        client.pending_calls_threshold = 100  # aiomqtt warns above it; we publish 50 at once
        self.agent_id = agent_id
        self.device_id = device_id
        self.seq = 0
        self.published = 0

    async def publish(self, batches: int, window: int = 50) -> None:
        """Publish ``batches`` QoS 1 batches, ``window`` of them awaiting their PUBACK at once."""
        for start in range(0, batches, window):
            await asyncio.gather(*(self._one() for _ in range(min(window, batches - start))))

    async def _one(self) -> None:
        first, self.published = self.published, self.published + READINGS_PER_BATCH
        batch = TelemetryBatch(
            agent_id=self.agent_id,
            seq=self.seq,
            readings=[
                Reading(device_id=self.device_id, ts=BASE_TS + first + i, values={"power": 1.5})
                for i in range(READINGS_PER_BATCH)
            ],
        )
        self.seq += 1
        await self.client.publish(topic(self.agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)


def _stored(influx: InfluxDatabase) -> Callable[[], int]:
    """How many distinct readings InfluxDB holds (one point per device and time: a reading
    written twice is counted once; the hub's own counter tells whether it was)."""

    def count() -> int:
        body = influx.query("SELECT COUNT(power) FROM smart_pole")
        series = body["results"][0].get("series")
        return int(series[0]["values"][0][1]) if series else 0

    return count


def _metric(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[-1])


async def test_hub_takes_a_backlog_of_more_than_10000_messages_without_discarding(
    mosquitto_factory: Callable[..., MosquittoServer],
    influx_db: InfluxDatabase,
    tmp_path: Path,
    unique_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mqtt")  # aiomqtt's discard warning
    broker = mosquitto_factory(extra_config=BROKER)
    settings = hub_settings(
        broker,
        tmp_path,
        unique_id,
        storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
        # raw publishers that do not wait for stored acknowledgements (as agents with
        # delivery.confirm: broker): per-agent limits would shed their backlog
        agent_limits=AgentLimitSettings(enabled=False),
    )
    stored = _stored(influx_db)
    mqtt = MqttSettings(host=broker.host, port=broker.port)
    clients = [
        make_client(mqtt, f"c-agent-{i}-{unique_id}", persistent_session=False)
        for i in range(AGENTS)
    ]
    agents = [
        Agent(client, f"agent-{i}-{unique_id}", f"pole-{i}-{unique_id}")
        for i, client in enumerate(clients)
    ]
    for client in clients:
        await client.__aenter__()
    try:

        async def all_stored() -> int | None:
            rows = await asyncio.to_thread(stored)
            expected = sum(a.published for a in agents)
            return rows if rows >= expected else None

        # live: the hub running while the agents publish as fast as they can
        async with running_hub(settings) as hub:
            for agent in agents:
                await announce_agent(agent.client, hub.api, agent.agent_id, agent.device_id)
            started = time.monotonic()
            await asyncio.gather(*(a.publish(LIVE_BATCHES) for a in agents))
            await eventually(all_stored, timeout=60)
            live_s = time.monotonic() - started
        live_readings = sum(a.published for a in agents)

        # the hub away: its persistent session keeps the agents' messages at the broker
        await asyncio.gather(*(a.publish(BACKLOG_BATCHES) for a in agents))
        backlog_readings = sum(a.published for a in agents) - live_readings

        started = time.monotonic()
        async with running_hub(settings) as hub:
            await eventually(all_stored, timeout=60)
            drain_s = time.monotonic() - started
            metrics = (await hub.api.get("/metrics")).text
    finally:
        for client in clients:
            await client.__aexit__(None, None, None)

    assert await asyncio.to_thread(stored) == live_readings + backlog_readings, "every reading"
    # stored once by the second hub too: nothing was redelivered (no reconnect, no discard)
    assert _metric(metrics, "hub_ingest_readings_total") == backlog_readings
    discards = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert not discards, f"{len(discards)} messages discarded"
    assert _metric(metrics, "hub_mqtt_inbound_overflow_total") == 0
    assert _metric(metrics, "hub_mqtt_inbound_paused_total") >= 1, "back-pressure applied"
    live_rate, drain_rate = live_readings / live_s, backlog_readings / drain_s
    print(
        f"\nlive ingest: {live_readings} readings in {live_s:.1f} s = {live_rate:.0f}/s; "
        f"backlog of {AGENTS * BACKLOG_BATCHES} messages ({backlog_readings} readings) "
        f"drained in {drain_s:.1f} s = {drain_rate:.0f}/s ({drain_rate / live_rate:.0%} of live); "
        f"paused {_metric(metrics, 'hub_mqtt_inbound_paused_total'):.0f} times, "
        f"{_metric(metrics, 'hub_mqtt_inbound_paused_seconds_total'):.1f} s"
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_stalled_consumer_keeps_its_link_and_overflow_reconnects_without_loss(
    mosquitto_factory: Callable[..., MosquittoServer], unique_id: str, protocol: Any
) -> None:
    """Paused with nobody taking messages, the client reads one pass every keepalive / 2
    (the link stays up); at its cap the next message taken raises InboundOverflow, and the
    broker redelivers everything unacknowledged to the next client of the session."""
    broker = mosquitto_factory(extra_config=BROKER)
    mqtt = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5, protocol=protocol)
    window = InboundWindow(high=20, low=5, cap=22)
    stats = InboundStats()
    subscriber = f"sub-{unique_id}"

    def session() -> Client:
        return make_client(
            mqtt,
            subscriber,
            persistent_session=True,
            session_expiry_s=600,
            manual_ack=True,
            inbound=window,
            inbound_stats=stats,
        )

    async with session() as client:
        await client.subscribe("t/#", qos=1)
    async with make_client(mqtt, f"pub-{unique_id}", persistent_session=False) as publisher:
        publisher.pending_calls_threshold = 300
        await asyncio.gather(*(publisher.publish("t/x", str(i), qos=1) for i in range(200)))

    async with session() as client:

        async def overflowed() -> bool | None:
            return True if stats.overflows else None

        await eventually(overflowed, timeout=30)  # nobody takes: keepalive reads fill it up
        assert stats.keepalive_reads >= 1
        assert stats.peak == window.cap
        with pytest.raises(InboundOverflow):
            await anext(aiter(client.messages))

    received: set[str] = set()
    async with session() as client:  # the broker redelivers what was not acknowledged
        async for message in client.messages:
            ack(client, message)
            received.add(
                str(message.payload, "ascii") if isinstance(message.payload, bytes) else ""
            )
            if len(received) == 200:
                break
    assert received == {str(i) for i in range(200)}
    assert stats.overflows == 1
