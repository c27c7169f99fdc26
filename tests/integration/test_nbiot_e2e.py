"""NB-IoT end to end: agent outbox → NbIotUplink → AT commands → simulated BC95 (real UDP) →
the hub's CoAP ingress → ingest → store; and commands back in the CoAP responses.

The hub runs in-process (its MQTT sessions on the test Mosquitto); the CoAP ingress is started
here until the hub's lifespan starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from cloud_hub.coap.ingress import CoapIngress
from cloud_hub.coap.models import provision_coap_secret
from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.hub import Hub
from cloud_hub.settings import HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from cloud_hub.storage.sqlite_store import SqliteStore
from device_profiles import load_builtin_profile
from device_profiles.wire import Channel, DesiredConfig, DeviceEvent, Reading
from drivers import ModbusTcpSettings
from drivers.fake import FakeDriver
from drivers.nbiot import NbIotModem, NbIotModemSettings
from edge_agent.commands.executor import CommandExecutor
from edge_agent.nbiot.settings import NbIotUplinkSettings
from edge_agent.nbiot.uplink import CoapRefused, NbIotUplink, WakingOutbox
from edge_agent.outbox.memory import Outbox
from edge_agent.polling.devices import DeviceRuntime
from edge_agent.settings import DeviceConfig
from firmware_sim.nbiot_modem import FaultRule, NbIotModemSim, run_nbiot_modem
from iot_runtime.mqtt import MqttSettings
from tests.helpers import eventually

pytestmark = pytest.mark.integration

AGENT = "nb-sensor-1"
DEVICE = "pole-nb-1"
SECRET = "test-secret-0123456789"
PROFILE = load_builtin_profile("smart_pole")


@dataclass
class Stack:
    hub: Hub
    ingress: CoapIngress
    sim: NbIotModemSim
    outbox: WakingOutbox
    driver: FakeDriver
    executor: CommandExecutor

    def uplink(
        self,
        secret: str = SECRET,
        on_config: Callable[[DesiredConfig], Coroutine[Any, Any, object]] | None = None,
        **overrides: Any,
    ) -> NbIotUplink:
        options: dict[str, Any] = {
            "modem": NbIotModemSettings(
                port=self.sim.port_path,
                command_timeout_s=1.0,
                socket_timeout_s=2.0,
                init_timeout_s=3.0,
            ),
            "hub_host": "127.0.0.1",
            "hub_port": self.ingress.port,
            "secret": secret,
            "uplink_interval_s": 3600,  # the tests wake it
            "ack_timeout_s": 0.5,
            "drain_idle_s": 0.3,
            "retry_min_s": 0.2,
            "command_linger_s": 10,
        } | overrides
        return NbIotUplink(
            AGENT,
            NbIotUplinkSettings(**options),
            self.outbox,
            [DeviceRuntime(_config(), PROFILE, self.driver).info],
            self.executor.handle,
            software_version="test",
            wake=self.outbox.urgent,
            on_config=on_config,
        )

    async def stored_rows(self) -> int:
        store = self.hub.store
        assert isinstance(store, SqliteStore)
        cursor = await store.db.execute(
            "SELECT count(*) FROM readings WHERE device_id = ?", (DEVICE,)
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


def _config() -> DeviceConfig:
    return DeviceConfig(
        device_id=DEVICE, profile="smart_pole", connection=ModbusTcpSettings(host="127.0.0.1")
    )


@contextlib.asynccontextmanager
async def running(task_coro: Any) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(task_coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def stack(mosquitto: Any, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-nbiot-{tmp_path.name}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
    )
    hub = Hub(settings)
    await hub.start()
    await provision_coap_secret(hub.registry, AGENT, SECRET)
    try:
        async with running(hub.run()):
            await asyncio.wait_for(hub.connected.wait(), 10)
            ingress = CoapIngress(hub, CoapIngressSettings(enabled=True, port=0))
            async with ingress, run_nbiot_modem() as sim:
                outbox = WakingOutbox(Outbox(AGENT, batch_max_delay_s=0.05))
                driver = FakeDriver(PROFILE)
                device = DeviceRuntime(_config(), PROFILE, driver)
                executor = CommandExecutor({DEVICE: device}, outbox)
                yield Stack(hub, ingress, sim, outbox, driver, executor)
    finally:
        await hub.close()


def _put_readings(outbox: WakingOutbox, count: int, start_ms: int) -> None:
    rng = random.Random(count)  # values that compress poorly, so batches must be split
    for i in range(count):
        outbox.put_reading(
            Reading(
                device_id=DEVICE,
                ts=start_ms + i * 1000,
                values={
                    "voltage": rng.uniform(200, 250),
                    "current": rng.uniform(0, 2),
                    "lamp_on": rng.random() < 0.5,
                },
            )
        )


async def test_readings_arrive_and_a_command_comes_back(stack: Stack) -> None:
    start = time.time_ns() // 1_000_000 - 60_000
    _put_readings(stack.outbox, 40, start)  # 120 values: more than one 512-byte datagram
    uplink = stack.uplink()
    async with running(uplink.run()):
        await asyncio.wait_for(uplink.connected.wait(), 20)

        async def all_stored() -> int | None:
            return await stack.stored_rows() if await stack.stored_rows() == 120 else None

        await eventually(all_stored)
        assert uplink.messages_sent >= 4  # birth + a batch split in parts
        assert all(len(d.data) <= 512 for d in stack.sim.sent_datagrams)
        assert stack.hub.ingest.stats["readings"] == 40
        agent = await stack.hub.registry.get_agent(AGENT)
        assert agent is not None
        assert agent.state == "online"

        row = await stack.hub.send_command(DEVICE, "set_dimming", {"level": 40})
        uplink.wake.set()  # the next uplink (a poll, here) carries it

        async def finished() -> str | None:
            current = await stack.hub.registry.get_command(row.command_id)
            assert current is not None
            return current.status if current.status == "succeeded" else None

        await eventually(finished)
        assert [w.name for w in stack.driver.writes] == ["dimming", "lamp_on"]
        assert stack.ingress.stats["commands_delivered"] == 1

        async def results_sent() -> bool | None:
            return True if not stack.outbox.urgent.is_set() else None

        await eventually(results_sent)  # in the same wake: nothing left to wake up for
        await asyncio.wait_for(uplink.asleep.wait(), 10)

        # an event ends the PSM sleep (the interval is an hour)
        stack.outbox.put_control(
            Channel.EVENTS,
            DeviceEvent(
                agent_id=AGENT, device_id=DEVICE, ts=time.time_ns() // 1_000_000, kind="offline"
            ),
        )

        async def offline() -> bool | None:
            device = await stack.hub.registry.get_device(DEVICE)
            return True if device is not None and device.status == "offline" else None

        await eventually(offline)


async def test_a_dropped_datagram_is_retransmitted_and_stored_once(stack: Stack) -> None:
    uplink = stack.uplink()
    async with running(uplink.run()):
        await asyncio.wait_for(uplink.asleep.wait(), 20)
        sim = stack.sim

        class DropNextSend(FaultRule):
            """The modem says it sent the datagram but it never leaves (lost on the radio)."""

            @property
            def reply(self) -> list[bytes]:
                socket_id, _, _, length = sim.commands[-1].partition("=")[2].split(",")[:4]
                return [f"+NSOST:{socket_id},{length}".encode(), b"OK"]

            @reply.setter
            def reply(self, value: object) -> None:
                pass

        commands_before = len(sim.commands)
        sim.faults.add(DropNextSend("AT+NSOST"))
        start = time.time_ns() // 1_000_000 - 30_000
        _put_readings(stack.outbox, 3, start)
        uplink.wake.set()

        async def stored() -> int | None:
            return 9 if await stack.stored_rows() == 9 else None

        await eventually(stored)
        assert uplink.retransmissions >= 1
        assert not sim.faults.rules  # the fault was used
        assert stack.hub.ingest.stats["readings"] == 3  # handled once
        # the retransmission is the same message (same MID, same bytes) as the lost one
        sends = [c for c in sim.commands[commands_before:] if c.upper().startswith("AT+NSOST")]
        assert sends[0] == sends[1]


async def test_a_lost_response_is_answered_again_without_storing_twice(stack: Stack) -> None:
    uplink = stack.uplink()
    async with running(uplink.run()):
        await asyncio.wait_for(uplink.asleep.wait(), 20)
        # the modem reports the hub's answer but hands out nothing when it is read: the agent
        # times out and retransmits; the hub answers the duplicate from its dedup cache
        stack.sim.faults.add(FaultRule("AT+NSORF", reply=[b"OK"]))
        retransmissions = uplink.retransmissions
        _put_readings(stack.outbox, 2, time.time_ns() // 1_000_000 - 10_000)
        uplink.wake.set()

        async def drained() -> bool | None:
            return True if stack.outbox.depth == 0 and await stack.stored_rows() == 6 else None

        await eventually(drained)
        assert uplink.retransmissions > retransmissions
        assert stack.hub.ingest.stats["readings"] == 2


async def test_a_wrong_hmac_is_refused_with_4_01(stack: Stack) -> None:
    uplink = stack.uplink(secret="not-the-right-secret-000")
    async with NbIotModem(uplink.settings.modem) as modem:
        with pytest.raises(CoapRefused) as refused:
            await uplink._cycle(modem)
    assert refused.value.code == int(Code.UNAUTHORIZED)
    assert not refused.value.permanent
    assert stack.ingress.stats["unauthorized"] == 1
    assert await stack.hub.registry.get_agent(AGENT) is None  # its birth was refused


async def test_a_silent_agent_goes_offline_and_is_back_with_its_next_uplink(stack: Stack) -> None:
    """No Last Will for a sleeping agent: the hub marks it offline after missed reports
    (its birth says how often it reports) and online again when it is heard from."""
    presence = stack.hub.presence
    presence.missed, presence.flush_interval_s = 2, 0.3
    uplink = stack.uplink(uplink_interval_s=1.0, register_timeout_s=1.0, retry_min_s=0.5)

    async def agent_state(expected: str) -> bool | None:
        agent = await stack.hub.registry.get_agent(AGENT)
        return True if agent is not None and agent.state == expected else None

    async def offline_alarms() -> list[Any]:
        # (the session broker also hands this hub other tests' retained Last Wills)
        return [
            a
            for a in await stack.hub.alarms.store.open_alarms()
            if a.rule == "agent_offline" and a.agent_id == AGENT
        ]

    async with running(uplink.run()):
        await eventually(lambda: agent_state("online"))
        agent = await stack.hub.registry.get_agent(AGENT)
        assert agent is not None and agent.report_interval_s == 1.0
        stack.sim.set_registration(0)  # out of coverage: nothing reaches the hub any more
        await eventually(lambda: agent_state("offline"), timeout=30)

        async def raised() -> bool | None:
            return True if len(await offline_alarms()) == 1 else None

        await eventually(raised)
        stack.sim.set_registration(None)  # back in coverage: the next cycle is heard
        await eventually(lambda: agent_state("online"), timeout=30)

        async def cleared() -> bool | None:
            return True if not await offline_alarms() else None

        await eventually(cleared)


async def test_a_configuration_and_the_commands_that_do_not_fit_beside_it_reach_a_sleeping_agent(
    stack: Stack,
) -> None:
    received: list[int] = []

    async def apply(desired: DesiredConfig) -> None:
        received.append(desired.version)

    registry = stack.hub.registry
    uplink = stack.uplink(on_config=apply)
    async with running(uplink.run()):
        await asyncio.wait_for(uplink.asleep.wait(), 20)
        stack.ingress.settings.max_response_bytes = 300  # a small datagram budget
        # a configuration big enough that no command fits beside it (random: no deflating)
        noise = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(120))
        await stack.hub.push_config(AGENT, {"devices": [], "note": noise})
        command = await stack.hub.send_command(DEVICE, "set_dimming", {"level": 30})
        uplink.wake.set()

        async def both_arrived() -> bool | None:
            return True if received == [1] and uplink.commands_received == 1 else None

        await eventually(both_arrived)
        row = await registry.get_command(command.command_id)
        assert row is not None and row.status != "queued"
        assert stack.ingress.stats["configs_delivered"] >= 1
        assert stack.ingress.stats["commands_delivered"] == 1
        # a configuration too large for any response is refused, with why, for the operator
        huge = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(2000))
        await stack.hub.push_config(AGENT, {"devices": [], "note": huge})
        uplink.wake.set()

        async def refused() -> str | None:
            row = await registry.get_config(AGENT)
            ok = row is not None and row.reported_version == 2
            return row.reported_detail if ok and row.reported_status == "rejected" else None

        detail = await eventually(refused)
        assert "too large for a CoAP response" in (detail or "")
        assert received == [1]
