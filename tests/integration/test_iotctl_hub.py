"""``iotctl hub`` as a technician runs it (subprocesses) against a real hub, a real edge agent
and a simulated smart pole: listing, commissioning with test commands, commands refused with
the hub's reason, alarms, and clear exit codes when the hub cannot be asked."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from drivers import ModbusRtuSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_gateway_bus
from tests.helpers import (
    devices_registered,
    eventually,
    hub_settings,
    make_keys,
    poles_behind_an_agent,
    running_hub,
)

pytestmark = pytest.mark.integration

IOTCTL = str(Path(sys.executable).with_name("iotctl"))


async def iotctl(url: str, key: str, *args: str) -> tuple[int, str]:
    env = {**os.environ, "IOTCTL_HUB_URL": url, "IOTCTL_API_KEY": key, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        IOTCTL,
        "hub",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_a_technician_commissions_a_pole_with_iotctl(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin", "technician", "viewer")
    device_id = f"pole-{unique_id}"
    url = f"http://127.0.0.1:{settings.api.port}"
    # the hub first: the agent's first readings (of values that then stay still) reach it
    async with (
        running_hub(settings, keys) as hub,
        poles_behind_an_agent(
            settings.mqtt, tmp_path / "agent", f"cabinet-{unique_id}", [device_id]
        ) as poles,
    ):
        await devices_registered(hub.api, [device_id])
        code, text = await iotctl(url, keys["technician"], "devices")
        assert code == 0 and device_id in text and "smart_pole" in text

        report = tmp_path / "commissioning.json"
        code, text = await iotctl(
            url,
            keys["technician"],
            "commission",
            device_id,
            "--test",
            "set_dimming level=40",
            "--test",
            "lamp_off",
            "--report",
            str(report),
        )
        assert code == 0, text
        assert "commissioning passed" in text
        document = json.loads(report.read_text())
        assert document["passed"] is True
        outcomes = {c["name"]: c["outcome"] for c in document["checks"]}
        assert outcomes == {
            "registered": "PASS",
            "agent online": "PASS",
            "reporting": "PASS",
            "command set_dimming level=40": "PASS",
            "command lamp_off": "PASS",
            "no active alarms": "PASS",
        }
        assert "telemetry shows dimming = 40" in json.dumps(document)
        assert (
            poles.sims[0].image.get("dimming") == 40 and poles.sims[0].image.get("lamp_on") is False
        )

        code, text = await iotctl(url, keys["technician"], "show", device_id)
        assert code == 0 and re.search(r"│ dimming +│ 40% +│", text), text
        # rounded to the profile's precision, with the unit (the API has the raw number)
        assert re.search(r"│ voltage +│ \d+\.\d V +│", text), text
        assert re.search(r"│ lamp_on +│ false +│", text), text

        # refused by the hub, with its reason; exit 1
        code, text = await iotctl(
            url, keys["technician"], "command", device_id, "set_dimming", "level=140"
        )
        assert code == 1 and "above the maximum 100" in text
        code, text = await iotctl(
            url, keys["technician"], "command", device_id, "set_dimming", "level=100"
        )
        assert code == 0 and "succeeded" in text

        # a device that is not there fails its commissioning; exit 1
        code, text = await iotctl(url, keys["technician"], "commission", "pole-nowhere")
        assert code == 1 and "FAIL" in text and "commissioning failed" in text

        code, text = await iotctl(url, keys["viewer"], "alarms")
        assert code == 0

        strategy = {
            "name": "night dimming",
            "selector": {"device_ids": [device_id]},
            "timezone": "Asia/Shanghai",
            "steps": [{"at": "23:30", "command": "set_dimming", "params": {"level": 50}}],
        }
        created = await hub.api.post("/api/v1/lighting/strategies", json=strategy)
        assert created.status_code == 201, created.text
        strategy_id = created.json()["strategy_id"]
        code, text = await iotctl(url, keys["viewer"], "lighting")
        assert code == 0 and strategy_id in text and "night dimming" in text
        code, text = await iotctl(
            url, keys["viewer"], "lighting", "--preview", strategy_id, "--hours", "48"
        )
        assert code == 0 and text.count("set_dimming level=50") == 2  # two nights
        assert text.count("lamp_on=True dimming=50") == 2  # the lamp state each step leaves
    # the hub cannot be asked: exit 2 with why
    code, text = await iotctl(url, keys["technician"], "devices")
    assert code == 2 and "cannot reach the hub" in text


async def test_iotctl_says_when_its_key_is_refused(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin", "viewer")
    url = f"http://127.0.0.1:{settings.api.port}"
    async with running_hub(settings, keys):
        code, text = await iotctl(url, "not-a-key", "devices")
        assert code == 2 and "401" in text
        code, text = await iotctl(url, keys["viewer"], "command", "pole-1", "lamp_on")
        assert code == 2 and "403" in text
        code, text = await iotctl(url, keys["viewer"], "command", "pole-1", "set_dimming", "40")
        assert code == 2 and "name=value" in text


async def reported(api: httpx.AsyncClient, device_id: str, point: str) -> None:
    """Wait until the hub's latest values of ``device_id`` include ``point``."""

    async def shown() -> bool | None:
        response = await api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
        return True if response.status_code == 200 and point in response.json()["points"] else None

    await eventually(shown, timeout=30)


async def test_commissioning_a_lamp_that_is_already_on_passes_at_once(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    """Unchanged points are re-sent only every max_silent_s (60 s); after a command the agent
    reports what it read back at once, so the hub's latest view shows lamp_on True now."""
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin", "technician")
    device_id = f"pole-{unique_id}"
    url = f"http://127.0.0.1:{settings.api.port}"
    # the hub first: the agent's first readings (of values that then stay still) reach it
    async with (
        running_hub(settings, keys) as hub,
        poles_behind_an_agent(
            settings.mqtt, tmp_path / "agent", f"cabinet-{unique_id}", [device_id]
        ) as poles,
    ):
        await devices_registered(hub.api, [device_id])
        await reported(hub.api, device_id, "lamp_on")
        assert poles.sims[0].image.get("lamp_on") is True  # the simulated lamp starts on
        code, text = await iotctl(
            url, keys["technician"], "commission", device_id, "--test", "lamp_on", "--timeout", "8"
        )
        assert code == 0, text
        assert "telemetry shows lamp_on = True" in text


async def test_commissioning_a_barrier_gate_checks_the_state_its_command_leads_to(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    """The gate's command register is momentary (cleared by the controller, never read
    back): commissioning checks the state the profile names in ``confirm`` instead, also
    when the gate is open already (unchanged: reported at once after the command)."""
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin", "technician")
    gate_id = f"gate-{unique_id}"
    url = f"http://127.0.0.1:{settings.api.port}"
    async with (
        run_gateway_bus(
            seed=5, tick_s=None, units={"barrier_gate": 3}, directory=str(tmp_path)
        ) as bus,
        running_hub(settings, keys) as hub,
    ):
        agent = Agent(
            AgentSettings(
                agent_id=f"gateway-{unique_id}",
                mqtt=settings.mqtt,
                devices=[
                    DeviceConfig(
                        device_id=gate_id,
                        profile="barrier_gate",
                        connection=ModbusRtuSettings(
                            port=bus.port_path, unit_id=3, baudrate=115200, timeout_s=0.5
                        ),
                        poll_interval_s=0.5,
                    )
                ],
                data_dir=tmp_path / "agent",
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            await devices_registered(hub.api, [gate_id])
            await reported(hub.api, gate_id, "state")
            args = ("commission", gate_id, "--test", "open", "--test", "open", "--timeout", "8")
            code, text = await iotctl(url, keys["technician"], *args)
            assert code == 0, text
            assert text.count("telemetry shows state = ") == 2, text
            assert "state = 1 (opening)" in text or "state = 2 (open)" in text
            assert bus.image_of("barrier_gate").get("state") in (1, 2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
