"""Overload: the hub offered twice what it can store, for a while; nothing lost, the lag grows
and recovers (issue 19's second proof).

    .venv/bin/python -m bench.hub_overload [--agents 8] [--readings 50] [--seconds 60]

The hub (``cloud_hub.server.serve``, in this process) with InfluxDB 1.6 and a private Mosquitto
(``bench._servers``: ``max_queued_messages 100000``); raw MQTT clients act as agents
(``bench.hub_backlog.Agent``: one device each, QoS 1 ``TelemetryBatch`` messages of
``--readings`` readings).

1. capacity: the agents publish a backlog while the hub is away, the hub starts, and its drain
   rate (readings stored per second) is the most it takes (its sustainable rate);
2. overload: for ``--seconds`` the agents offer twice that rate, paced every 0.1 s; every
   second the lag (readings published, not yet stored) is sampled;
3. recovery: once the offer stops, the time until every reading is stored, with the telemetry
   session's back-pressure counters (``/metrics``) and aiomqtt discards.

No assertions; it prints the lag over time and the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

from bench._servers import console, machine, print_table, private_servers
from bench.hub_backlog import Agent, Discards, metric
from cloud_hub.ingest.agent_limits import AgentLimitSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import free_port
from tests.helpers import announce_agent, eventually, running_hub


async def main(agents_n: int, readings: int, seconds: float) -> None:
    console.print(f"bench.hub_overload on {machine()}")
    discards = Discards()
    logging.getLogger("mqtt").addHandler(discards)
    with private_servers(influxdb=True) as servers:
        assert servers.influxdb is not None
        influx = servers.influxdb
        influx.create_database("overload")
        settings = HubSettings(
            mqtt=MqttSettings(host=servers.mosquitto.host, port=servers.mosquitto.port),
            client_id="bench-hub",
            storage=InfluxV1Settings(url=influx.url, database="overload"),
            registry_url=f"sqlite+aiosqlite:///{servers.tmp / 'registry.db'}",
            api=ApiSettings(port=free_port()),
            # raw publishers that do not wait for stored acknowledgements: not limited
            agent_limits=AgentLimitSettings(enabled=False),
        )
        clients = [
            make_client(settings.mqtt, f"bench-agent-{i}", persistent_session=False)
            for i in range(agents_n)
        ]
        agents = [Agent(c, f"a{i}", readings) for i, c in enumerate(clients)]
        for client in clients:
            await client.__aenter__()

        def count() -> int:
            body = influx.query("overload", "SELECT COUNT(power) FROM smart_pole")
            series = body["results"][0].get("series")
            return int(series[0]["values"][0][1]) if series else 0

        def published() -> int:
            return sum(a.published for a in agents)

        async def all_stored(limit_s: float) -> float:
            start = time.perf_counter()

            async def probe() -> bool | None:
                return True if await asyncio.to_thread(count) >= published() else None

            await eventually(probe, timeout=limit_s)
            return time.perf_counter() - start

        try:
            async with running_hub(settings) as hub:
                for agent in agents:
                    await announce_agent(agent.client, hub.api, agent.agent_id, agent.device_id)
            # 1. capacity: a backlog drained by a hub that does nothing else
            await asyncio.gather(*(a.publish(2_000 // agents_n) for a in agents))
            backlog = published()
            async with running_hub(settings):
                drain_s = await all_stored(600)
            capacity = backlog / drain_s

            # 2. overload at twice the capacity, paced every 0.1 s
            offered = 2 * capacity
            per_tick = max(1, round(offered * 0.1 / readings / agents_n))
            samples: list[tuple[float, int, int]] = []
            async with running_hub(settings) as hub:
                start = time.perf_counter()
                before = published()
                next_sample = 1.0
                while (now := time.perf_counter() - start) < seconds:
                    tick_start = time.perf_counter()
                    await asyncio.gather(*(a.publish(per_tick, window=per_tick) for a in agents))
                    await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick_start)))
                    if now >= next_sample:
                        stored = await asyncio.to_thread(count)
                        samples.append((now, published() - before, published() - stored))
                        next_sample += 1.0
                overload_s = time.perf_counter() - start
                offered_total = published() - before
                # 3. recovery
                recovery_s = await all_stored(900)
                metrics = (await hub.api.get("/metrics")).text
            final = await asyncio.to_thread(count)
        finally:
            for client in clients:
                await client.__aexit__(None, None, None)
    print_table(
        f"Hub overload ({agents_n} agents, {readings} readings a message, InfluxDB)",
        ["second", "offered so far", "lag (published, not stored)"],
        [
            [f"{t:.0f}", f"{p:,}", f"{lag:,}"]
            for t, p, lag in samples[:: max(1, len(samples) // 12)]
        ],
        f"capacity (backlog drain) {capacity:,.0f} readings/s; offered {offered_total:,} readings "
        f"in {overload_s:.1f} s = {offered_total / overload_s:,.0f} readings/s "
        f"({offered_total / overload_s / capacity:.2f}x capacity); recovered "
        f"{recovery_s:.1f} s after the offer stopped; stored {final:,} of {published():,} "
        f"published; telemetry session paused "
        f"{metric(metrics, 'hub_mqtt_inbound_paused_total'):.0f} times, "
        f"{metric(metrics, 'hub_mqtt_inbound_paused_seconds_total'):.1f} s; overflow "
        f"{metric(metrics, 'hub_mqtt_inbound_overflow_total'):.0f}; aiomqtt discards "
        f"{discards.count}.",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--readings", type=int, default=50, help="readings a message")
    parser.add_argument("--seconds", type=float, default=60, help="of overload")
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.readings, args.seconds))
