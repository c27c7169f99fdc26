"""Backlog recovery: how fast the hub drains telemetry queued at the broker while it was away,
against its live ingest rate measured in the same run (issue 19).

    .venv/bin/python -m bench.hub_backlog [--agents 8] [--backlog 40000] [--readings 5]

The hub (``cloud_hub.server.serve``, in this process) with InfluxDB 1.6 and a private Mosquitto
(``bench._servers``); raw MQTT clients act as agents (one device each) publishing QoS 1
``TelemetryBatch`` messages of ``--readings`` readings, 50 awaiting their PUBACK per agent.

1. live: the hub running, the agents publish ``--backlog`` / 4 messages as fast as they can;
   from the first publish until InfluxDB holds every reading;
2. the hub stopped (its persistent session stays at the broker), the agents publish
   ``--backlog`` messages (the broker's publish rate, a baseline of what the broker takes);
3. the hub started again: from the start until InfluxDB holds every reading (drain rate),
   with the telemetry session's back-pressure counters (``/metrics``) and aiomqtt discards.

No assertions; the asserted short version is ``tests/integration/test_hub_backlog.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from bench._servers import console, machine, print_table, private_servers
from cloud_hub.ingest.agent_limits import AgentLimitSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles.wire import QOS, Channel, Reading, TelemetryBatch, encode, topic
from iot_runtime.mqtt import Client, MqttSettings, make_client
from tests.harness import free_port
from tests.helpers import announce_agent, eventually, running_hub

T0 = 1_760_000_000_000


class Discards(logging.Handler):
    """Counts aiomqtt's "Message queue is full. Discarding message." warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "queue is full" in record.getMessage():
            self.count += 1


class Agent:
    def __init__(self, client: Client, agent_id: str, readings: int) -> None:
        self.client, self.agent_id, self.readings = client, agent_id, readings
        self.device_id = f"pole-{agent_id}"
        client.pending_calls_threshold = 100
        self.seq = 0
        self.published = 0

    async def publish(self, batches: int, window: int = 50) -> None:
        for start in range(0, batches, window):
            await asyncio.gather(*(self._one() for _ in range(min(window, batches - start))))

    async def _one(self) -> None:
        first, self.published = self.published, self.published + self.readings
        batch = TelemetryBatch(
            agent_id=self.agent_id,
            seq=self.seq,
            readings=[
                Reading(device_id=self.device_id, ts=T0 + first + i, values={"power": 1.5})
                for i in range(self.readings)
            ],
        )
        self.seq += 1
        await self.client.publish(topic(self.agent_id, Channel.TELEMETRY), encode(batch), qos=QOS)


def metric(text: str, name: str) -> float:
    return float(next(ln for ln in text.splitlines() if ln.startswith(f"{name} ")).split()[-1])


async def main(agents_n: int, backlog: int, readings: int) -> None:
    console.print(f"bench.hub_backlog on {machine()}")
    discards = Discards()
    logging.getLogger("mqtt").addHandler(discards)
    with private_servers(influxdb=True) as servers:
        assert servers.influxdb is not None
        influx = servers.influxdb
        influx.create_database("backlog")
        settings = HubSettings(
            mqtt=MqttSettings(host=servers.mosquitto.host, port=servers.mosquitto.port),
            client_id="bench-hub",
            storage=InfluxV1Settings(url=influx.url, database="backlog"),
            registry_url=f"sqlite+aiosqlite:///{servers.tmp / 'registry.db'}",
            api=ApiSettings(port=free_port()),
            # raw publishers that do not wait for stored acknowledgements: not limited
            agent_limits=AgentLimitSettings(enabled=False),
        )
        mqtt = settings.mqtt
        clients = [
            make_client(mqtt, f"bench-agent-{i}", persistent_session=False) for i in range(agents_n)
        ]
        agents = [Agent(c, f"a{i}", readings) for i, c in enumerate(clients)]
        for client in clients:
            await client.__aenter__()

        def count() -> int:
            body = influx.query("backlog", "SELECT COUNT(power) FROM smart_pole")
            series = body["results"][0].get("series")
            return int(series[0]["values"][0][1]) if series else 0

        def stored(expected: int) -> Callable[[], Any]:
            async def probe() -> bool | None:
                return True if await asyncio.to_thread(count) >= expected else None

            return probe

        per_agent_backlog = backlog // agents_n
        per_agent_live = max(1, per_agent_backlog // 4)
        try:
            async with running_hub(settings) as hub:
                for agent in agents:
                    await announce_agent(agent.client, hub.api, agent.agent_id, agent.device_id)
                start = time.perf_counter()
                await asyncio.gather(*(a.publish(per_agent_live) for a in agents))
                await eventually(stored(sum(a.published for a in agents)), timeout=600)
                live_s = time.perf_counter() - start
            live = sum(a.published for a in agents)

            start = time.perf_counter()
            await asyncio.gather(*(a.publish(per_agent_backlog) for a in agents))
            publish_s = time.perf_counter() - start
            queued = sum(a.published for a in agents) - live

            start = time.perf_counter()
            async with running_hub(settings) as hub:
                await eventually(stored(live + queued), timeout=600)
                drain_s = time.perf_counter() - start
                metrics = (await hub.api.get("/metrics")).text
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
    messages = per_agent_backlog * agents_n
    live_rate = live / live_s
    print_table(
        f"Hub backlog recovery ({agents_n} agents, {readings} readings a message, InfluxDB)",
        ["phase", "messages", "readings", "seconds", "readings/s", "vs live"],
        [
            [
                "live ingest (hub running)",
                f"{per_agent_live * agents_n:,}",
                f"{live:,}",
                f"{live_s:.2f}",
                f"{live_rate:,.0f}",
                "1.00",
            ],
            [
                "published to the broker, hub away",
                f"{messages:,}",
                f"{queued:,}",
                f"{publish_s:.2f}",
                f"{queued / publish_s:,.0f}",
                f"{queued / publish_s / live_rate:.2f}",
            ],
            [
                "backlog drained (hub start → all stored)",
                f"{messages:,}",
                f"{queued:,}",
                f"{drain_s:.2f}",
                f"{queued / drain_s:,.0f}",
                f"{queued / drain_s / live_rate:.2f}",
            ],
        ],
        f"telemetry session: paused {metric(metrics, 'hub_mqtt_inbound_paused_total'):.0f} times, "
        f"{metric(metrics, 'hub_mqtt_inbound_paused_seconds_total'):.1f} s; overflow "
        f"{metric(metrics, 'hub_mqtt_inbound_overflow_total'):.0f}; aiomqtt discards "
        f"{discards.count}; readings stored by the restarted hub "
        f"{metric(metrics, 'hub_ingest_readings_total'):,.0f} (of {queued:,}: more = redelivered).",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--backlog", type=int, default=40_000, help="messages queued")
    parser.add_argument("--readings", type=int, default=5, help="readings a message")
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.backlog, args.readings))
