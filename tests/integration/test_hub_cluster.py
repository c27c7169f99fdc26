"""One hub in many processes: two ``cloud-hub serve`` processes in one MQTT 5 shared
subscription group, on one PostgreSQL registry and a real Mosquitto.

The broker splits the telemetry between them; the leader lease (``leader_lease_s: 3``) picks
one to run the alarm engine (fed by its own non-shared telemetry subscription), the webhook
relay and the command sweep. These tests check what must happen once and in order although
two processes see the same facts: a duration alarm over readings split between them, one
offline alarm, one webhook delivery per event (counted by ``X-Hub-Delivery``), a failover
after SIGKILL, and deliveries that survive a receiver outage and hub restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import yaml

from device_profiles.wire import (
    QOS,
    AgentState,
    Channel,
    CommandRequest,
    CommandResult,
    DeviceEvent,
    DeviceInfo,
    Reading,
    TelemetryBatch,
    agent_client_id,
    decode,
    encode,
    topic,
)
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import ManagedProcess, MosquittoServer, free_port
from tests.harness.webhook_receiver import Delivery, WebhookReceiver
from tests.helpers import eventually, make_keys

pytestmark = pytest.mark.integration

LEASE_S = 3.0
T0 = 1_790_000_000_000  # edge time of the first reading
DURABLE = ["status", "alarm", "command"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _metric(text: str, name: str) -> float:
    """The value of one sample (``name`` with its labels, as Prometheus prints it)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


@dataclass
class HubProcess:
    """One ``cloud-hub serve`` subprocess and an admin API client for it."""

    name: str
    process: ManagedProcess
    api: httpx.AsyncClient

    async def start(self) -> None:
        await asyncio.to_thread(self.process.start)

    async def stop(self) -> None:
        await asyncio.to_thread(self.process.stop)

    def kill(self) -> None:
        self.process.kill()

    async def leader(self) -> bool:
        return bool((await self.api.get("/healthz")).json()["leader"])

    async def metrics(self) -> str:
        response = await self.api.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text


@dataclass
class Cluster:
    hubs: list[HubProcess]
    mqtt: MqttSettings
    unique_id: str

    async def roles(self) -> tuple[HubProcess, HubProcess]:
        """(leader, follower) once exactly one process leads; never two at once."""

        async def one_leader() -> tuple[HubProcess, HubProcess] | None:
            alive = [h for h in self.hubs if h.process.running]
            flags = [await h.leader() for h in alive]
            assert sum(flags) <= 1, f"two leaders at once: {[h.name for h in alive]} {flags}"
            if sum(flags) != 1 or len(alive) != 2:
                return None
            leader = alive[flags.index(True)]
            return leader, next(h for h in alive if h is not leader)

        return await eventually(one_leader, timeout=30)

    async def feed_subscribed(self, leader: HubProcess) -> None:
        async def subscribed() -> bool | None:
            text = await leader.metrics()
            return True if _metric(text, 'hub_broker_connected{session="alarms"}') else None

        await eventually(subscribed)


def _settings(
    n: int, mqtt: MosquittoServer, pg_url: str, unique_id: str, tmp: Path
) -> dict[str, Any]:
    return {
        "mqtt": {"host": mqtt.host, "port": mqtt.port},
        "client_id": f"hub{n}-{unique_id}",
        "shared_subscription_group": f"hubs-{unique_id}",
        "leader_lease_s": LEASE_S,
        "registry_url": pg_url,
        "storage": {"backend": "sqlite", "path": str(tmp / f"telemetry-{n}.db")},
        "api": {"host": "127.0.0.1", "port": free_port()},
        # retry long enough to outlast a receiver outage; notice others' changes quickly
        "webhooks": {
            "max_attempts": 50,
            "backoff_initial_s": 0.1,
            "backoff_max_s": 0.5,
            "refresh_s": 0.5,
        },
        "event_log": {"poll_interval_s": 0.2},
        "log_format": "json",
    }


def _hub(n: int, settings: dict[str, Any], admin_key: str, tmp: Path) -> HubProcess:
    config = tmp / f"hub{n}.yaml"
    config.write_text(yaml.safe_dump(settings))
    base = f"http://127.0.0.1:{settings['api']['port']}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
            return bool(response.status == 200)

    process = ManagedProcess(
        f"hub{n}",
        [str(Path(sys.executable).with_name("cloud-hub")), "serve", "--config", str(config)],
        log_path=tmp / f"hub{n}.log",
        ready=ready,
        cwd=tmp,  # the hub's own files (spool) stay in the test's directory
        start_timeout=60,
    )
    api = httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {admin_key}"}, timeout=10
    )
    return HubProcess(f"hub{n}", process, api)


@pytest.fixture
async def cluster(
    mosquitto_private: MosquittoServer, pg_url: str, unique_id: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    # a broker of its own: no other test's retained agents; migrated once, before both start
    keys = await make_keys(pg_url, "admin")
    hubs = [
        _hub(
            n, _settings(n, mosquitto_private, pg_url, unique_id, tmp_path), keys["admin"], tmp_path
        )
        for n in (1, 2)
    ]
    try:
        await asyncio.gather(*(hub.start() for hub in hubs))
        mqtt = MqttSettings(host=mosquitto_private.host, port=mosquitto_private.port)
        yield Cluster(hubs, mqtt, unique_id)
    finally:
        for hub in hubs:
            await hub.api.aclose()
        await asyncio.gather(*(hub.stop() for hub in hubs))


@dataclass
class Agent:
    """The test plays an edge agent over MQTT."""

    client: aiomqtt.Client
    agent_id: str
    device_id: str

    async def birth(self) -> int:
        ts = _now_ms()
        state = AgentState(
            agent_id=self.agent_id,
            state="online",
            ts=ts,
            devices=[DeviceInfo(device_id=self.device_id, profile="smart_pole")],
        )
        await self.publish(Channel.STATE, encode(state), retain=True)
        return ts

    async def last_will(self) -> None:
        """What the broker publishes for an agent that vanished: its Last Will, no time."""
        will = AgentState(agent_id=self.agent_id, state="offline")
        await self.publish(Channel.STATE, encode(will), retain=True)

    async def reading(self, seq: int, ts_ms: int, **values: Any) -> None:
        reading = Reading(device_id=self.device_id, ts=ts_ms, values=values)
        batch = TelemetryBatch(agent_id=self.agent_id, seq=seq, readings=[reading])
        await self.publish(Channel.TELEMETRY, encode(batch))

    async def device_event(self, kind: str) -> None:
        event = DeviceEvent(
            agent_id=self.agent_id, device_id=self.device_id, ts=_now_ms(), kind=kind
        )
        await self.publish(Channel.EVENTS, encode(event))

    async def execute_next_command(self) -> str:
        """Receive a command and report it delivered, then succeeded."""
        async with asyncio.timeout(20):
            message = await anext(self.client.messages)
        assert isinstance(message.payload, bytes)
        request = decode(CommandRequest, message.payload)
        for status in ("delivered", "succeeded"):
            result = CommandResult(
                command_id=request.command_id,
                device_id=request.device_id,
                status=status,
                ts=_now_ms(),
            )
            await self.publish(Channel.COMMAND_RESULTS, encode(result))
        return request.command_id

    async def publish(self, channel: Channel, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(topic(self.agent_id, channel), payload, qos=QOS, retain=retain)


@contextlib.asynccontextmanager
async def agent(cluster: Cluster) -> AsyncIterator[Agent]:
    agent_id = f"agent-{cluster.unique_id}"
    client = make_client(cluster.mqtt, agent_client_id(agent_id), persistent_session=False)
    async with client:
        await client.subscribe(topic(agent_id, Channel.COMMANDS), qos=QOS)
        yield Agent(client, agent_id, f"pole-{cluster.unique_id}")


async def _registered(cluster: Cluster, device_id: str) -> None:
    async def everywhere() -> bool | None:
        for hub in cluster.hubs:
            if hub.process.running:
                response = await hub.api.get(f"/api/v1/devices/{device_id}")
                if response.status_code != 200:
                    return None
        return True

    await eventually(everywhere)


async def _webhook(hub: HubProcess, url: str) -> str:
    created = await hub.api.post("/api/v1/webhooks", json={"url": url, "kinds": DURABLE})
    assert created.status_code == 201, created.text
    webhook_id: str = created.json()["webhook_id"]
    return webhook_id


async def _alarms(hub: HubProcess, **query: str) -> list[dict[str, Any]]:
    response = await hub.api.get("/api/v1/alarms", params={"limit": "500", **query})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _fact(delivery: Delivery) -> tuple[str, ...]:
    """What a delivery reports, so that the same fact delivered twice shows."""
    body = delivery.json()
    data = body["data"]
    if body["kind"] == "status":
        return ("status", data["scope"], body["agent_id"], str(body["device_id"]), data["state"])
    if body["kind"] == "command":
        return ("command", data["command_id"], data["status"])
    return ("alarm", data["alarm_id"], data["transition"])


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


async def _delivered(receiver: WebhookReceiver, wanted: set[tuple[str, ...]]) -> None:
    async def all_there() -> bool | None:
        return True if wanted <= {_fact(d) for d in receiver.deliveries} else None

    await eventually(all_there, timeout=30)


async def test_alarms_and_webhooks_happen_once_although_two_processes_see_everything(
    cluster: Cluster,
) -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        leader, follower = await cluster.roles()
        await cluster.feed_subscribed(leader)
        # created through the follower: the leader's relay picks it up from the registry
        await _webhook(follower, receiver.url)
        async with agent(cluster) as edge:
            await edge.birth()
            await _registered(cluster, edge.device_id)

            # (a) PM2.5 > 75 for 600 s. The dip at 100 s restarts the duration at 200 s: it is
            # complete at 800 s, and 50 at 1000 s clears it. A process seeing only every other
            # message would raise at 600 s (no dip) or at 900 s and never clear.
            for k in range(11):
                pm25 = 70 if k == 1 else 50 if k == 10 else 80
                await edge.reading(k, T0 + k * 100_000, pm25=pm25)

            async def cleared() -> list[dict[str, Any]] | None:
                rows = await _alarms(leader, device_id=edge.device_id)
                return rows if rows and all(r["state"] == "cleared" for r in rows) else None

            [pm25] = await eventually(cleared, timeout=30)
            assert pm25["rule"] == "pm25_high"
            assert _ms(pm25["raised_at"]) == T0 + 800_000
            assert _ms(pm25["cleared_at"]) == T0 + 1_000_000
            readings = [
                _metric(await h.metrics(), "hub_ingest_readings_total") for h in cluster.hubs
            ]
            assert sum(readings) == 11 and all(readings), readings  # the readings were split

            # (c) a command through the follower's API: queued there, delivered by the leader
            sent = await follower.api.post(
                f"/api/v1/devices/{edge.device_id}/commands",
                json={"name": "set_dimming", "params": {"level": 40}},
            )
            assert sent.status_code == 202, sent.text
            command_id = sent.json()["command_id"]
            assert await edge.execute_next_command() == command_id

            async def succeeded() -> bool | None:
                row = (await leader.api.get(f"/api/v1/commands/{command_id}")).json()
                return True if row["status"] == "succeeded" else None

            await eventually(succeeded)

            # (b) the agent vanishes: both control sessions get its Last Will
            await edge.last_will()

            async def offline_alarms() -> list[dict[str, Any]] | None:
                rows = [
                    a
                    for a in await _alarms(follower)
                    if a["rule"] == "agent_offline" and a["agent_id"] == edge.agent_id
                ]
                return rows or None

            await eventually(offline_alarms)
        offline = await offline_alarms()
        assert offline is not None and len(offline) == 1, offline

        # every process appends what it saw; once the followers' own later event arrives, all
        # it appended before has been delivered (the log is delivered in order)
        marker = await follower.api.post(
            f"/api/v1/devices/{edge.device_id}/commands", json={"name": "lamp_on", "params": {}}
        )
        assert marker.status_code == 202, marker.text
        marker_id = marker.json()["command_id"]
        agent_id = edge.agent_id
        wanted = {
            ("status", "agent", agent_id, "None", "online"),
            ("status", "agent", agent_id, "None", "offline"),
            ("alarm", pm25["alarm_id"], "raised"),
            ("alarm", pm25["alarm_id"], "cleared"),
            ("alarm", offline[0]["alarm_id"], "raised"),
            *(("command", command_id, s) for s in ("queued", "sent", "delivered", "succeeded")),
            ("command", marker_id, "queued"),
        }
        await _delivered(receiver, wanted)
        ids = Counter(d.id for d in receiver.deliveries)
        assert max(ids.values()) == 1, ids  # no delivery twice (the receiver always said 200)
        facts = Counter(_fact(d) for d in receiver.deliveries)
        assert max(facts.values()) == 1, facts  # and no fact in two deliveries
        assert wanted <= set(facts), wanted - set(facts)
        for delivery in receiver.deliveries:
            assert delivery.headers["x-hub-event"] == delivery.json()["kind"]
            assert delivery.json()["delivery_id"] == delivery.id
        assert await leader.leader() and not await follower.leader()
    finally:
        await receiver.stop()


async def test_the_follower_takes_over_when_the_leader_is_killed(cluster: Cluster) -> None:
    receiver = WebhookReceiver()
    await receiver.start()
    try:
        leader, follower = await cluster.roles()
        await _webhook(leader, receiver.url)
        async with agent(cluster) as edge:
            await edge.birth()
            await _registered(cluster, edge.device_id)
            agent_id = edge.agent_id
            await _delivered(receiver, {("status", "agent", agent_id, "None", "online")})

            leader.kill()  # SIGKILL: no lease release, no flush
            killed = time.monotonic()
            # facts appended while nobody delivers: the follower's own command, a device event
            sent = await follower.api.post(
                f"/api/v1/devices/{edge.device_id}/commands",
                json={"name": "set_dimming", "params": {"level": 10}},
            )
            assert sent.status_code == 202, sent.text
            command_id = sent.json()["command_id"]
            await edge.device_event("offline")

            async def took_over() -> bool | None:
                return True if await follower.leader() else None

            await eventually(took_over, timeout=LEASE_S * 4)
            took = time.monotonic() - killed
            # expiry (3 s) + at most one attempt interval (1 s) + scheduling slack
            assert took <= LEASE_S + LEASE_S / 3 + 1.5, took
            await cluster.feed_subscribed(follower)

            # alarms continue on the new leader: its own feed sees the readings
            await edge.reading(1, T0, tilt=9)

            async def tilted() -> dict[str, Any] | None:
                rows = await _alarms(follower, device_id=edge.device_id)
                return next((r for r in rows if r["rule"] == "tilt_exceeded"), None)

            tilt = await eventually(tilted)
            assert _ms(tilt["raised_at"]) == T0
            # the device event came while no engine ran: the new leader found it in the registry
            rows = {r["rule"]: r for r in await _alarms(follower, device_id=edge.device_id)}
            assert set(rows) == {"tilt_exceeded", "device_offline"}, rows
            await _delivered(
                receiver,
                {
                    ("command", command_id, "queued"),
                    ("command", command_id, "sent"),
                    ("status", "device", agent_id, edge.device_id, "offline"),
                    ("alarm", tilt["alarm_id"], "raised"),
                    ("alarm", rows["device_offline"]["alarm_id"], "raised"),
                },
            )
        # at least once across a failover: a repeat carries the same X-Hub-Delivery
        by_fact: dict[tuple[str, ...], set[str]] = {}
        for delivery in receiver.deliveries:
            by_fact.setdefault(_fact(delivery), set()).add(delivery.id)
        assert all(len(ids) == 1 for ids in by_fact.values()), by_fact
        assert len(await _alarms(follower, device_id=edge.device_id)) == 2  # once each
    finally:
        await receiver.stop()


async def test_webhook_events_wait_for_a_receiver_across_hub_restarts(cluster: Cluster) -> None:
    receiver = WebhookReceiver()
    leader, _ = await cluster.roles()
    await _webhook(leader, receiver.url)  # the receiver is down from the start
    async with agent(cluster) as edge:
        await edge.birth()
        await _registered(cluster, edge.device_id)
        commands = []
        for hub in cluster.hubs:
            sent = await hub.api.post(
                f"/api/v1/devices/{edge.device_id}/commands",
                json={"name": "lamp_off", "params": {}},
            )
            assert sent.status_code == 202, sent.text
            commands.append(sent.json()["command_id"])

        async def logged() -> bool | None:  # every event is in the log before the restart
            appended = [
                _metric(await h.metrics(), "hub_event_log_appended_total") for h in cluster.hubs
            ]
            return True if sum(appended) >= 1 + 2 * 2 else None  # birth, 2 x (queued, sent)

        await eventually(logged)
        for hub in cluster.hubs:  # both restart while the receiver is still down
            await hub.stop()
        for hub in cluster.hubs:
            await hub.start()
        await cluster.roles()
        await receiver.start()
        try:
            agent_id = edge.agent_id
            wanted = {("status", "agent", agent_id, "None", "online")}
            wanted |= {("command", c, s) for c in commands for s in ("queued", "sent")}
            await _delivered(receiver, wanted)
            by_fact: dict[tuple[str, ...], set[str]] = {}
            for delivery in receiver.deliveries:
                by_fact.setdefault(_fact(delivery), set()).add(delivery.id)
            assert all(len(ids) == 1 for ids in by_fact.values()), by_fact
        finally:
            await receiver.stop()
