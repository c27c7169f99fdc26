"""A stand-alone NB-IoT sensor, end to end through the real pieces: the agent (configured with
``nbiot:``) polls a simulated pole, sends compact CoAP over the simulated modem's real UDP to
the hub's CoAP ingress, and a command queued at the hub comes back in a response and runs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from drivers import ModbusTcpSettings
from drivers.nbiot import NbIotModemSettings
from edge_agent.agent import Agent
from edge_agent.nbiot.settings import NbIotUplinkSettings
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_nbiot_modem, run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration


async def test_nbiot_sensor_reports_and_executes_a_command(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id, device_id = f"nb-{unique_id}", f"pole-{unique_id}"
    coap_port = free_port()
    hub_settings = HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        coap=CoapIngressSettings(enabled=True, host="127.0.0.1", port=coap_port),
    )
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(hub_settings))
        created = await hub.api.post(f"/api/v1/agents/{agent_id}/coap-secret")
        assert created.status_code == 201, created.text
        modem = await stack.enter_async_context(run_nbiot_modem(link_dir=str(tmp_path)))
        sim = await stack.enter_async_context(run_smart_pole(seed=1, port=0, tick_s=None))
        agent = Agent(
            AgentSettings(
                agent_id=agent_id,
                devices=[
                    DeviceConfig(
                        device_id=device_id,
                        profile="smart_pole",
                        connection=ModbusTcpSettings(host=sim.host, port=sim.port),
                        poll_interval_s=0.5,
                    )
                ],
                nbiot=NbIotUplinkSettings(
                    modem=NbIotModemSettings(port=modem.port_path),
                    hub_host="127.0.0.1",
                    hub_port=coap_port,
                    secret=created.json()["secret"],
                    uplink_interval_s=0.5,
                ),
                data_dir=tmp_path / "agent",
            )
        )
        task = asyncio.create_task(agent.run())
        try:

            async def reported() -> bool | None:
                response = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
                return True if response.status_code == 200 and response.json()["points"] else None

            await eventually(reported, timeout=30)
            assert modem.sent_datagrams, "the readings went out through the modem"
            response = await hub.api.post(
                f"/api/v1/devices/{device_id}/commands",
                json={"name": "set_dimming", "params": {"level": 55}},
            )
            command_id = response.json()["command_id"]

            async def done() -> str | None:
                status: str = (await hub.api.get(f"/api/v1/commands/{command_id}")).json()["status"]
                return status if status in {"succeeded", "failed", "rejected"} else None

            assert await eventually(done, timeout=30) == "succeeded"
            assert sim.image.get("dimming") == 55

            # remote configuration reaches the sleeping sensor in a CoAP response: a second
            # pole is added live, then a broken configuration is refused with the reason
            second = f"pole-b-{unique_id}"
            sim_b = await stack.enter_async_context(run_smart_pole(seed=2, port=0, tick_s=None))
            both = {"devices": [_device(device_id, sim.port), _device(second, sim_b.port)]}
            response = await hub.api.put(f"/api/v1/agents/{agent_id}/config", json={"config": both})
            assert response.status_code == 202, response.text

            async def config_status(version: int) -> dict[str, Any] | None:
                body: dict[str, Any] = (
                    await hub.api.get(f"/api/v1/agents/{agent_id}/config")
                ).json()
                return body if body["version"] == version and body["status"] != "pending" else None

            report = await eventually(lambda: config_status(1), timeout=30)
            assert report["status"] == "applied", report
            assert {p.device.device_id for p in agent.pollers} == {device_id, second}

            async def second_reports() -> bool | None:
                response = await hub.api.get(f"/api/v1/devices/{second}/telemetry/latest")
                return True if response.status_code == 200 and response.json()["points"] else None

            await eventually(second_reports, timeout=30)
            broken = {"devices": [{**_device(second, sim_b.port), "profile": "toaster"}]}
            await hub.api.put(f"/api/v1/agents/{agent_id}/config", json={"config": broken})
            report = await eventually(lambda: config_status(2), timeout=30)
            assert report["status"] == "rejected"
            assert "no built-in profile 'toaster'" in report["detail"]
            assert agent.config_version == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _device(device_id: str, port: int) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "profile": "smart_pole",
        "connection": {"transport": "modbus_tcp", "host": "127.0.0.1", "port": port},
        "poll_interval_s": 0.5,
    }
