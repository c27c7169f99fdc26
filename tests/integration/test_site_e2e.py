"""A whole site end to end: one agent polls a smart pole (Modbus TCP), a community gateway
RS-485 bus with five devices (Modbus RTU on a pseudo-terminal), a manhole-cover sensor (CoAP)
and a pollution analyser (HJ 212-2017 on a serial line), through Mosquitto, into the hub; the
barrier gate opens on an API command."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles import load_builtin_profile
from drivers import CoapSettings, Hj212SerialSettings, ModbusRtuSettings, ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import (
    run_gateway_bus,
    run_manhole_sensor,
    run_pollution_analyser,
    run_smart_pole,
)
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration


async def test_one_agent_four_transports_eight_devices(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    hub_settings = HubSettings(
        mqtt=mqtt,
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    async with contextlib.AsyncExitStack() as stack:
        pole = await stack.enter_async_context(run_smart_pole(seed=1, port=0, tick_s=None))
        bus = await stack.enter_async_context(
            run_gateway_bus(seed=2, tick_s=None, directory=str(tmp_path))
        )
        manhole = await stack.enter_async_context(run_manhole_sensor(seed=3, port=0, tick_s=None))
        analyser = await stack.enter_async_context(
            run_pollution_analyser(seed=4, rtd_interval_s=0.5)
        )
        devices = [
            DeviceConfig(
                device_id=f"pole-{unique_id}",
                profile="smart_pole",
                connection=ModbusTcpSettings(host=pole.host, port=pole.port),
                poll_interval_s=0.5,
            ),
            DeviceConfig(
                device_id=f"manhole-{unique_id}",
                profile="manhole_cover",
                connection=CoapSettings(
                    host=manhole.host, port=manhole.port, timeout_s=0.5, retries=1
                ),
                poll_interval_s=0.5,
            ),
            DeviceConfig(
                device_id=f"aqm-{unique_id}",
                profile="pollution_monitor",
                connection=Hj212SerialSettings(port=analyser.pty_path),
                poll_interval_s=0.5,
            ),
        ] + [
            DeviceConfig(
                device_id=f"{name.replace('_', '-')}-{unique_id}",
                profile=name,
                connection=ModbusRtuSettings(
                    port=bus.port_path, unit_id=unit, baudrate=115200, timeout_s=0.5
                ),
                poll_interval_s=0.5,
            )
            for name, unit in bus.units.items()
        ]
        agent = Agent(
            AgentSettings(
                agent_id=f"site-{unique_id}",
                mqtt=mqtt,
                devices=devices,
                data_dir=tmp_path / "agent",
            )
        )
        hub = await stack.enter_async_context(running_hub(hub_settings))
        agent_task = asyncio.create_task(agent.run())
        try:
            await analyser.wait_connected()
            await analyser.send_minute()  # the 1-minute averages, without waiting a minute
            for device in devices:
                profile = load_builtin_profile(device.profile)

                wanted = frozenset(profile.points)

                async def complete(
                    device_id: str = device.device_id, wanted: frozenset[str] = wanted
                ) -> dict[str, Any] | None:
                    response = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
                    if response.status_code != 200:
                        return None
                    points: dict[str, Any] = response.json()["points"]
                    return points if set(points) == wanted else None

                try:
                    await eventually(complete)
                except AssertionError:
                    response = await hub.api.get(
                        f"/api/v1/devices/{device.device_id}/telemetry/latest"
                    )
                    health = {
                        p.device.device_id: (p.online, p.polls, p.errors) for p in agent.pollers
                    }
                    metrics = (await hub.api.get("/metrics")).text
                    raise AssertionError(
                        f"{device.device_id}: {response.text} {health} {metrics}"
                    ) from None

            gate_id = f"barrier-gate-{unique_id}"
            response = await hub.api.post(
                f"/api/v1/devices/{gate_id}/commands", json={"name": "open"}
            )
            assert response.status_code == 202, response.text
            command_id = response.json()["command_id"]

            async def finished() -> dict[str, Any] | None:
                body: dict[str, Any] = (await hub.api.get(f"/api/v1/commands/{command_id}")).json()
                return body if body["status"] not in {"queued", "sent", "delivered"} else None

            done = await eventually(finished)
            assert done["status"] == "succeeded", done
            gate_writes = [w for w in bus.writes if w.unit_id == bus.units["barrier_gate"]]
            assert gate_writes, bus.writes
            agents = (await hub.api.get("/api/v1/agents")).json()
            mine = [a for a in agents if a["agent_id"] == f"site-{unique_id}"]
            assert mine and mine[0]["state"] == "online"
        finally:
            agent_task.cancel()
            await asyncio.gather(agent_task, return_exceptions=True)
