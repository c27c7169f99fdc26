"""The first end-to-end slice, on real servers:

simulated smart pole (pymodbus server) ← edge agent (Modbus TCP driver) → Mosquitto →
hub ingest → InfluxDB → HTTP API; and back: API command → Mosquitto → agent → register write.

Every hop is checked against the simulator's registers, so breaking any of them fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.api.keys import create_api_key
from cloud_hub.registry import Registry
from cloud_hub.server import serve
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles import load_builtin_profile
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration

PROFILE = load_builtin_profile("smart_pole")


@dataclass
class Stack:
    api: httpx.AsyncClient
    sim: Any
    influx_query: Callable[[str], dict[str, Any]]
    keys: dict[str, str]


@contextlib.asynccontextmanager
async def running_stack(
    mosquitto: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> AsyncIterator[Stack]:
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    api_port = free_port()
    hub_settings = HubSettings(
        mqtt=mqtt,
        client_id=f"hub-{unique_id}",
        storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=api_port),
    )
    keys: dict[str, str] = {}
    registry = Registry(hub_settings.registry_url)
    await registry.start()
    for role in ("admin", "viewer"):
        keys[role] = (await create_api_key(registry, f"test {role}", role))[1]
    await registry.close()
    # the simulator does not tick by itself during the test, so every value stays what its
    # registers hold until a write changes it: exact comparisons are possible
    async with run_smart_pole(seed=7, port=0, tick_s=None) as sim:
        agent_settings = AgentSettings(
            agent_id=f"agent-{unique_id}",
            mqtt=mqtt,
            devices=[
                DeviceConfig(
                    device_id=f"pole-{unique_id}",
                    profile="smart_pole",
                    connection=ModbusTcpSettings(host=sim.host, port=sim.port, unit_id=sim.unit_id),
                    poll_interval_s=0.2,
                )
            ],
            batch_max_delay_s=0.05,
            data_dir=tmp_path / "agent",
        )
        async with asyncio.TaskGroup() as group:
            started = asyncio.Event()
            hub = group.create_task(serve(hub_settings, started))
            await started.wait()
            agent = group.create_task(Agent(agent_settings).run())
            base_url = f"http://127.0.0.1:{api_port}"
            headers = {"Authorization": f"Bearer {keys['admin']}"}
            async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as api:
                yield Stack(api, sim, influx_db.query, keys)
            agent.cancel()
            hub.cancel()


def _same(point: str, stored: object, expected: object) -> bool:
    if isinstance(expected, float) or isinstance(stored, float):
        assert isinstance(stored, int | float) and isinstance(expected, int | float)
        return math.isclose(stored, expected, rel_tol=1e-6, abs_tol=1e-9)
    return stored == expected


async def test_pole_telemetry_lands_in_influxdb_and_a_command_dims_the_lamp(
    mosquitto: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    device_id = f"pole-{unique_id}"
    async with running_stack(mosquitto, influx_db, tmp_path, unique_id) as stack:
        sim, api = stack.sim, stack.api
        expected = {name: sim.image.get(name) for name in PROFILE.points}

        # 1. telemetry: API latest == simulator registers, for every point of the profile
        async def all_points() -> dict[str, Any] | None:
            response = await api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
            if response.status_code != 200:
                return None
            points = response.json()["points"]
            return points if set(points) == set(PROFILE.points) else None

        points = await eventually(all_points)
        for name, want in expected.items():
            assert _same(name, points[name]["value"], want), (name, points[name], want)
            assert points[name]["unit"] == PROFILE.points[name].unit

        # ... and InfluxDB itself holds them, under the device's tags, as typed fields
        body = stack.influx_query(
            f'SELECT LAST("power"), LAST("dimming") FROM smart_pole WHERE device_id = \'{device_id}\''
        )
        [series] = body["results"][0]["series"]
        _, power, dimming = series["values"][0]
        assert _same("power", power, expected["power"])
        assert dimming == expected["dimming"]
        assert expected["lamp_on"] is True and expected["dimming"] == 100

        # 2. a command: set_dimming 40 → the register is written, the power drops, succeeded
        response = await api.post(
            f"/api/v1/devices/{device_id}/commands",
            json={"name": "set_dimming", "params": {"level": 40}},
        )
        assert response.status_code == 202, response.text
        command = response.json()
        assert command["status"] in {"queued", "sent"}

        async def finished() -> dict[str, Any] | None:
            body = (await api.get(f"/api/v1/commands/{command['command_id']}")).json()
            return body if body["status"] not in {"queued", "sent", "delivered"} else None

        done = await eventually(finished)
        assert done["status"] == "succeeded", done
        # a level as lighting controllers mean it: the level, then the relay on
        assert [(w.point, w.value) for w in sim.writes] == [("dimming", 40), ("lamp_on", True)]
        assert sim.image.get("dimming") == 40
        full_power = expected["power"]
        assert sim.image.get("power") == pytest.approx(full_power * 0.4, rel=0.1)

        async def dimmed_power_stored() -> float | None:
            points = (await api.get(f"/api/v1/devices/{device_id}/telemetry/latest")).json()[
                "points"
            ]
            power = points["power"]["value"]
            # the command's own report (dimming, lamp_on) comes first; power with the next poll
            dimmed = points["dimming"]["value"] == 40 and power < full_power * 0.5
            return power if dimmed else None

        stored_power = await eventually(dimmed_power_stored)
        # the simulated lamp's draw wanders a little between polls: the dimmed level's draw
        assert stored_power == pytest.approx(sim.image.get("power"), rel=0.05)

        # 3. refused with a 422 that says why; nothing reaches the device
        for body, reason in [
            ({"name": "self_destruct"}, "unknown command 'self_destruct'"),
            ({"name": "set_dimming", "params": {"level": 140}}, "above the maximum 100"),
            ({"name": "set_dimming", "params": {"level": "bright"}}, "must be an int"),
            ({"name": "set_dimming"}, "needs parameter 'level'"),
        ]:
            response = await api.post(f"/api/v1/devices/{device_id}/commands", json=body)
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert reason in response.json()["detail"]
        assert len(sim.writes) == 2
        sent = (await api.get("/api/v1/audit", params={"action": "command.send"})).json()["items"]
        assert [e["detail"]["command_id"] for e in sent] == [command["command_id"]]

        # the history: raw and aggregated, through the API
        history = await api.get(
            "/api/v1/telemetry", params={"device_id": device_id, "point": ["power", "dimming"]}
        )
        assert history.status_code == 200, history.text
        power = next(s for s in history.json()["series"] if s["point"] == "power")
        assert power["unit"] == "W" and power["values"][-1][1] == pytest.approx(stored_power)
        windowed = await api.get(
            "/api/v1/telemetry",
            params={"device_id": device_id, "point": "dimming", "window_s": 3600, "agg": "min"},
        )
        assert windowed.json()["series"][0]["values"][-1][1] == 40
        # agg alone: per minute (window_s's default)
        averaged = await api.get(
            "/api/v1/telemetry", params={"device_id": device_id, "agg": "mean"}
        )
        assert averaged.status_code == 200 and averaged.json()["window_s"] == 60

        # 4. an alarm from the profile's rules: the cabinet door opens at the pole
        sim.image.set("door_open", True)

        async def door_alarm() -> dict[str, Any] | None:
            body = (await api.get("/api/v1/alarms", params={"device_id": device_id})).json()
            active = [
                a for a in body["items"] if a["rule"] == "door_open" and a["state"] == "active"
            ]
            return active[0] if active else None

        alarm = await eventually(door_alarm)
        assert alarm["severity"] == "minor"
        sim.image.set("door_open", False)

        async def door_cleared() -> bool | None:
            found = (await api.get(f"/api/v1/alarms/{alarm['alarm_id']}")).json()
            return True if found["state"] == "cleared" else None

        await eventually(door_cleared)

        # 5. unknown device → 404 problem
        response = await api.post("/api/v1/devices/nope/commands", json={"name": "lamp_on"})
        assert response.status_code == 404
        assert (await api.get("/api/v1/devices/nope/telemetry/latest")).status_code == 404


async def test_api_keys_and_roles_are_enforced(
    mosquitto: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    device_id = f"pole-{unique_id}"
    async with running_stack(mosquitto, influx_db, tmp_path, unique_id) as stack:
        api = stack.api
        anonymous = {"Authorization": ""}
        viewer = {"Authorization": f"Bearer {stack.keys['viewer']}"}
        for method, path in [
            ("GET", "/api/v1/devices"),
            ("GET", f"/api/v1/devices/{device_id}/telemetry/latest"),
            ("POST", f"/api/v1/devices/{device_id}/commands"),
            ("GET", "/api/v1/commands/x"),
            ("GET", "/api/v1/api-keys"),
            ("GET", "/metrics"),
        ]:
            response = await api.request(method, path, headers=anonymous, json={"name": "lamp_on"})
            assert response.status_code == 401, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
        bad = await api.get("/api/v1/devices", headers={"Authorization": "Bearer cp_nope"})
        assert bad.status_code == 401
        assert (await api.get("/healthz", headers=anonymous)).status_code == 200
        assert (await api.get("/api/v1/devices", headers=viewer)).status_code == 200
        refused = await api.post(
            f"/api/v1/devices/{device_id}/commands", headers=viewer, json={"name": "lamp_on"}
        )
        assert refused.status_code == 403
        assert "may not command" in refused.json()["detail"]
        assert (await api.get("/api/v1/api-keys", headers=viewer)).status_code == 403
        assert stack.sim.writes == []

        # admin: create a key, use it, revoke it
        created = await api.post(
            "/api/v1/api-keys", json={"name": "ops centre", "role": "operator"}
        )
        assert created.status_code == 201
        operator = {"Authorization": f"Bearer {created.json()['secret']}"}
        assert (await api.get("/api/v1/devices", headers=operator)).status_code == 200
        revoked = await api.delete(f"/api/v1/api-keys/{created.json()['key_id']}")
        assert revoked.status_code == 204
        assert (await api.get("/api/v1/devices", headers=operator)).status_code == 401

        # every mutation is in the audit log, with who did it
        log = (await api.get("/api/v1/audit")).json()["items"]
        actions = {(entry["action"], entry["target"]) for entry in log}
        key_id = created.json()["key_id"]
        assert ("api_key.create", f"api_key:{key_id}") in actions
        assert ("api_key.revoke", f"api_key:{key_id}") in actions
        assert all(entry["actor"] for entry in log)
        assert (await api.get("/api/v1/audit", headers=viewer)).status_code == 403
        assert isinstance((await api.get("/api/v1/dead-letters")).json()["items"], list)
        assert (await api.get("/api/v1/dead-letters", headers=viewer)).status_code == 403

        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert "hub_ingest_messages_total" in metrics.text
