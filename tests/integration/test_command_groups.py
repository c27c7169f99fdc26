"""Commands to many devices at once (aggregated progress), and cancelling a command."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings, SqliteStoreSettings
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration


async def test_group_command_dims_every_selected_pole_and_cancel_stops_a_queued_one(
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
        sims = [
            await stack.enter_async_context(run_smart_pole(seed=i, port=0, tick_s=None))
            for i in range(3)
        ]
        ids = [f"pole-{i}-{unique_id}" for i in range(3)]
        agent_settings = AgentSettings(
            agent_id=f"road-{unique_id}",
            mqtt=mqtt,
            devices=[
                DeviceConfig(
                    device_id=device_id,
                    profile="smart_pole",
                    connection=ModbusTcpSettings(host=sim.host, port=sim.port),
                    poll_interval_s=0.5,
                )
                for device_id, sim in zip(ids, sims, strict=True)
            ],
            data_dir=tmp_path / "agent",
        )
        hub = await stack.enter_async_context(running_hub(hub_settings))
        agent = asyncio.create_task(Agent(agent_settings).run())
        try:

            async def registered() -> bool | None:
                devices = (await hub.api.get("/api/v1/devices")).json()
                return True if {d["device_id"] for d in devices} >= set(ids) else None

            await eventually(registered)
            body = {"selector": {"device_ids": ids}, "name": "set_dimming", "params": {"level": 25}}
            response = await hub.api.post("/api/v1/command-groups", json=body)
            assert response.status_code == 202, response.text
            group = response.json()
            assert group["total"] == 3 and group["rejected"] == {}

            async def done() -> dict[str, Any] | None:
                body = (await hub.api.get(f"/api/v1/command-groups/{group['group_id']}")).json()
                return body if body["done"] else None

            finished = await eventually(done)
            assert finished["by_status"] == {"succeeded": 3}
            assert all(sim.image.get("dimming") == 25 for sim in sims)

            refused = await hub.api.post(
                "/api/v1/command-groups",
                json={
                    "selector": {"profile": "smart_pole", "device_ids": ids},
                    "name": "set_dimming",
                    "params": {"level": 140},
                },
            )
            assert refused.status_code == 422
            assert "above the maximum 100" in refused.json()["detail"]
            everything = await hub.api.post(
                "/api/v1/command-groups", json={"selector": {}, "name": "lamp_off"}
            )
            assert everything.status_code == 422

            # the agent goes away; a command for it waits, and is cancelled
            agent.cancel()
            await asyncio.gather(agent, return_exceptions=True)
            response = await hub.api.post(
                f"/api/v1/devices/{ids[0]}/commands", json={"name": "lamp_off"}
            )
            command_id = response.json()["command_id"]
            cancelled = await hub.api.post(f"/api/v1/commands/{command_id}/cancel")
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            again = await hub.api.post(f"/api/v1/commands/{command_id}/cancel")
            assert again.status_code == 409
            assert (await hub.api.post("/api/v1/commands/nope/cancel")).status_code == 404
            viewer = {"Authorization": f"Bearer {hub.keys['viewer']}"}
            assert (
                await hub.api.post("/api/v1/command-groups", json=body, headers=viewer)
            ).status_code == 403
        finally:
            agent.cancel()
            await asyncio.gather(agent, return_exceptions=True)
