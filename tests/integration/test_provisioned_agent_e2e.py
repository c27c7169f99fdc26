"""Provisioning end to end, as a technician does it on site: a claim token from the hub →
`edge-agent provision` on the cabinet → the agent runs with its own broker credentials (the
broker refuses anonymous clients) → its telemetry is queryable → a command succeeds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.provisioning import DynsecAdminSettings, ProvisioningSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from firmware_sim import run_smart_pole
from iot_runtime import load_settings
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration


async def test_token_to_running_agent_to_telemetry_and_command(
    dynsec_broker: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id, device_id = f"cab-{unique_id}", f"pole-{unique_id}"
    settings = HubSettings(
        mqtt=dynsec_broker.hub,
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        provisioning=ProvisioningSettings(
            broker_admin=DynsecAdminSettings(
                username="admin", password=dynsec_broker.admin.password
            )
        ),
    )
    async with run_smart_pole(seed=1, port=0, tick_s=None) as sim, running_hub(settings) as hub:
        token = await hub.api.post("/api/v1/provisioning/tokens", json={"site": "north"})
        assert token.status_code == 201, token.text
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"agent_id: {agent_id}\n"
            f"mqtt: {{host: {dynsec_broker.server.host}, port: {dynsec_broker.server.port}}}\n"
            "devices:\n"
            f"  - device_id: {device_id}\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: {sim.host}, port: {sim.port}}}\n"
            "    poll_interval_s: 0.5\n"
            f"data_dir: {tmp_path / 'agent'}\n"
        )
        provisioned = await asyncio.to_thread(
            subprocess.run,
            [
                str(Path(sys.executable).parent / "edge-agent"), "provision",
                "--hub", str(hub.api.base_url), "--token", token.json()["token"],
                "--config", str(config),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert provisioned.returncode == 0, provisioned.stdout + provisioned.stderr
        agent_settings = load_settings(AgentSettings, config)
        assert agent_settings.mqtt.username  # the broker credentials the hub issued
        agent = Agent(agent_settings)
        task = asyncio.create_task(agent.run())
        try:

            async def telemetry() -> bool | None:
                response = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
                return True if response.status_code == 200 and response.json()["points"] else None

            await eventually(telemetry)
            device = (await hub.api.get(f"/api/v1/devices/{device_id}")).json()
            assert device["site"] == "north"
            response = await hub.api.post(
                f"/api/v1/devices/{device_id}/commands", json={"name": "lamp_off"}
            )
            command_id = response.json()["command_id"]

            async def done() -> str | None:
                status: str = (await hub.api.get(f"/api/v1/commands/{command_id}")).json()["status"]
                return status if status in {"succeeded", "failed", "rejected"} else None

            assert await eventually(done) == "succeeded"
            assert sim.image.get("lamp_on") is False

            # object-level checks: a technician of another site does not see this device
            async def key(site: str) -> dict[str, str]:
                body = {"name": f"tech {site}", "role": "technician", "site": site}
                created = await hub.api.post("/api/v1/api-keys", json=body)
                return {"Authorization": f"Bearer {created.json()['secret']}"}

            south, north = await key("south"), await key("north")
            for method, path in [
                ("GET", f"/api/v1/devices/{device_id}"),
                ("GET", f"/api/v1/devices/{device_id}/telemetry/latest"),
                ("POST", f"/api/v1/devices/{device_id}/commands"),
                ("GET", f"/api/v1/commands/{command_id}"),
                ("GET", f"/api/v1/telemetry?device_id={device_id}"),
            ]:
                refused = await hub.api.request(
                    method, path, headers=south, json={"name": "lamp_on"}
                )
                assert refused.status_code == 404, (path, refused.text)
            assert (await hub.api.get("/api/v1/devices", headers=south)).json() == []
            group = {"selector": {"site": "north"}, "name": "lamp_on"}
            assert (
                await hub.api.post("/api/v1/command-groups", json=group, headers=south)
            ).status_code == 403
            ok = await hub.api.post(
                f"/api/v1/devices/{device_id}/commands", json={"name": "lamp_on"}, headers=north
            )
            assert ok.status_code == 202, ok.text
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
