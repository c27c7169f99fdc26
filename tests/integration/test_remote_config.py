"""Configuration pushed from the hub: validated at the edge, applied without a restart,
reported back, and kept across an agent restart."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration


def _device(device_id: str, port: int) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "profile": "smart_pole",
        "connection": {"transport": "modbus_tcp", "host": "127.0.0.1", "port": port},
        "poll_interval_s": 0.3,
    }


async def test_pushed_configuration_adds_and_removes_devices_live(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    agent_id = f"cab-{unique_id}"
    first, second = f"pole-a-{unique_id}", f"pole-b-{unique_id}"
    hub_settings = HubSettings(
        mqtt=mqtt,
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    async with contextlib.AsyncExitStack() as stack:
        sim_a = await stack.enter_async_context(run_smart_pole(seed=1, port=0, tick_s=None))
        sim_b = await stack.enter_async_context(run_smart_pole(seed=2, port=0, tick_s=None))
        settings = AgentSettings(
            agent_id=agent_id,
            mqtt=mqtt,
            devices=[
                DeviceConfig(
                    device_id=first,
                    profile="smart_pole",
                    connection=ModbusTcpSettings(host=sim_a.host, port=sim_a.port),
                    poll_interval_s=0.3,
                )
            ],
            data_dir=tmp_path / "agent",
        )
        hub = await stack.enter_async_context(running_hub(hub_settings))
        agent = Agent(settings)
        task = asyncio.create_task(agent.run())
        try:

            async def has_telemetry(device_id: str) -> bool | None:
                response = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
                return True if response.status_code == 200 and response.json()["points"] else None

            await eventually(lambda: has_telemetry(first))

            async def config_status(version: int) -> dict[str, Any] | None:
                body: dict[str, Any] = (
                    await hub.api.get(f"/api/v1/agents/{agent_id}/config")
                ).json()
                return body if body["version"] == version and body["status"] != "pending" else None

            # 1. add a second pole
            both = {"devices": [_device(first, sim_a.port), _device(second, sim_b.port)]}
            response = await hub.api.put(f"/api/v1/agents/{agent_id}/config", json={"config": both})
            assert response.status_code == 202, response.text
            assert response.json()["version"] == 1
            report = await eventually(lambda: config_status(1))
            assert report["status"] == "applied", report
            await eventually(lambda: has_telemetry(second))
            assert {p.device.device_id for p in agent.pollers} == {first, second}

            # 2. a broken configuration is rejected with the reason, and nothing changes
            broken = {"devices": [{**_device(second, sim_b.port), "profile": "toaster"}]}
            await hub.api.put(f"/api/v1/agents/{agent_id}/config", json={"config": broken})
            report = await eventually(lambda: config_status(2))
            assert report["status"] == "rejected"
            assert "devices[0].profile: no built-in profile 'toaster'" in report["detail"]
            assert {p.device.device_id for p in agent.pollers} == {first, second}

            # 3. remove the first pole: its poller stops, the other keeps going
            only_b = {"devices": [_device(second, sim_b.port)]}
            await hub.api.put(f"/api/v1/agents/{agent_id}/config", json={"config": only_b})
            report = await eventually(lambda: config_status(3))
            assert report["status"] == "applied", report
            assert [p.device.device_id for p in agent.pollers] == [second]
            unknown = await hub.api.put("/api/v1/agents/nobody/config", json={"config": only_b})
            assert unknown.status_code == 404
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # 4. a restarted agent runs the applied configuration, not its file's devices
        restarted = Agent(settings)
        assert list(restarted.devices) == [second]
        assert restarted.config_version == 3
        restarted.outbox.close()
        restarted.journal.close()
