"""A broker killed (SIGKILL) while 5 poles are polled at 10 Hz: every reading still lands once.

The broker forgets what it acknowledged since its last save (with no save at all, also the
hub's session and subscriptions), so only the end-to-end stored acknowledgements keep the
readings: the agent holds every batch until the hub says it stored it, and publishes again
what the broker answered "no matching subscribers" while the hub was not yet back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from iot_runtime.mqtt import NO_MATCHING_SUBSCRIBERS, MqttSettings, make_client
from tests.harness import free_port
from tests.harness.blackhole import BlackholeProxy
from tests.helpers import eventually, fast_pole_agent, fast_poles, running_hub

pytestmark = pytest.mark.integration

POLES = 5


def _stored_times(influx_db: Any) -> dict[str, list[int]]:
    body = influx_db.query("SELECT power FROM smart_pole GROUP BY device_id", epoch="ms")
    return {
        s["tags"]["device_id"]: [row[0] for row in s["values"]]
        for s in body["results"][0].get("series", [])
    }


async def _run_with_fault(
    broker: Any,
    influx_db: Any,
    tmp_path: Path,
    unique_id: str,
    fault: Callable[[], None] | Callable[[], Awaitable[None]],
    down_s: float,
    hub_away: bool = False,
    restore: Callable[[], None] | None = None,
    agent_mqtt: MqttSettings | None = None,
) -> None:
    """5 poles at 10 Hz through an agent and the hub; ``fault`` (blocking) hits the broker
    mid-run, which comes back after ``down_s``; then every served reading must be stored.
    With ``hub_away`` the hub is stopped before the fault (the broker queues the readings for
    its session) and started again after it. ``restore`` (default: start the broker) ends
    the fault; ``agent_mqtt`` is how the agent reaches the broker (e.g. through a proxy)."""
    mqtt = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5)
    hub_settings = HubSettings(
        mqtt=mqtt,
        client_id=f"hub-{unique_id}",
        storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    async with contextlib.AsyncExitStack() as stack:
        sims = await fast_poles(stack, POLES)
        device_ids = [f"pole-{i}-{unique_id}" for i in range(len(sims))]
        agent = fast_pole_agent(
            f"agent-{unique_id}", agent_mqtt or mqtt, sims, device_ids, tmp_path / "agent"
        )
        hub = running_hub(hub_settings)
        await hub.__aenter__()
        agent_task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            await asyncio.sleep(3)  # polling and delivering before the fault (a pace)
            if hub_away:
                await hub.__aexit__(None, None, None)
                await asyncio.sleep(2)  # the broker queues the readings for the hub's session
            if inspect.iscoroutinefunction(fault):
                await fault()
            else:
                await asyncio.to_thread(fault)
            await asyncio.sleep(down_s)
            await asyncio.to_thread(restore or broker.start)
            if hub_away:
                await asyncio.sleep(1)  # the agent is back first: "no matching subscribers"
                hub = running_hub(hub_settings)
                await hub.__aenter__()
            await asyncio.sleep(3)  # polling goes on after the broker is back
            for sim in sims:
                await sim.server.stop()
            served = {p.device.device_id: p.polls for p in agent.pollers}
            assert all(n > 50 for n in served.values()), served

            async def all_stored() -> dict[str, list[int]] | None:
                nonlocal served  # (a poll answered just before its server stopped counts)
                served = {p.device.device_id: p.polls for p in agent.pollers}
                got = await asyncio.to_thread(_stored_times, influx_db)
                return got if {d: len(t) for d, t in got.items()} == served else None

            try:
                got = await eventually(all_stored, timeout=90)
            except AssertionError:
                got = await asyncio.to_thread(_stored_times, influx_db)
                counts = {d: len(t) for d, t in got.items()}
                raise AssertionError(
                    f"stored {counts} != served {served}; spool depth {agent.outbox.depth}, "
                    f"unconfirmed {agent.outbox.unconfirmed_batches}"
                ) from None
            for device_id, times in got.items():
                assert len(set(times)) == len(times) == served[device_id], device_id

            async def confirmed() -> bool | None:
                return True if agent.outbox.depth == 0 else None

            await eventually(confirmed, timeout=30)  # the spool empties: all acknowledged
            assert agent.outbox.unconfirmed_batches == 0
        finally:
            agent_task.cancel()
            await asyncio.gather(agent_task, return_exceptions=True)
            await hub.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("saved", "hub_away"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["before-any-autosave", "after-a-save", "hub-away-before-autosave", "hub-away-after-save"],
)
async def test_a_broker_sigkill_loses_no_reading_of_five_poles_at_10hz(
    mosquitto_factory: Callable[..., Any],
    influx_db: Any,
    tmp_path: Path,
    unique_id: str,
    saved: bool,
    hub_away: bool,
) -> None:
    broker = mosquitto_factory(autosave_interval=3600)

    def crash() -> None:
        if saved:
            broker.save()  # the broker has written its sessions and queues once...
        broker.kill()  # ... and then dies without writing what came after

    await _run_with_fault(
        broker, influx_db, tmp_path, unique_id, crash, down_s=3, hub_away=hub_away
    )


async def test_the_broker_tells_a_publish_that_nobody_was_subscribed_to(
    mosquitto: Any, unique_id: str
) -> None:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    async with make_client(mqtt, f"probe-{unique_id}", persistent_session=False) as client:
        # outside iot/v1/: other tests' hub sessions on this broker subscribe to iot/v1/+/...
        name = f"reason-probe/{unique_id}/telemetry"
        assert await client.publish_reason(name, b"{}", qos=1) == NO_MATCHING_SUBSCRIBERS
        await client.subscribe(name, qos=1)
        assert await client.publish_reason(name, b"{}", qos=1) == 0


class _PrivateDatabase:
    """One database of a test's own InfluxDB, shaped like the ``influx_db`` fixture."""

    def __init__(self, server: Any, name: str) -> None:
        self.server, self.name, self.url = server, name, server.url

    def query(self, influxql: str, *, epoch: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.server.query(self.name, influxql, epoch=epoch)
        return result


async def test_an_influxdb_sigkill_loses_no_reading_of_five_poles_at_10hz(
    mosquitto: Any, influxdb_private: Any, tmp_path: Path, unique_id: str
) -> None:
    database = _PrivateDatabase(influxdb_private, "iot")
    await _run_with_fault(
        mosquitto,
        database,
        tmp_path,
        unique_id,
        influxdb_private.kill,
        down_s=5,
        restore=influxdb_private.start,
    )


async def test_a_flapping_link_loses_no_reading_of_five_poles_at_10hz(
    mosquitto: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    async with BlackholeProxy(mosquitto.host, mosquitto.port) as proxy:

        async def flap() -> None:
            for _ in range(3):  # the link goes silent, comes back, goes silent again
                proxy.freeze()
                await asyncio.sleep(1)
                proxy.thaw()
                await asyncio.sleep(9)  # the agent notices (1.5 x keepalive 5 s), reconnects

        await _run_with_fault(
            mosquitto,
            influx_db,
            tmp_path,
            unique_id,
            flap,
            down_s=0,
            restore=lambda: None,
            agent_mqtt=MqttSettings(host="127.0.0.1", port=proxy.port, keepalive_s=5),
        )
