"""One agent cannot take another's device (issue 15 item 4): the claim is refused, audited and
alarmed; the owner's readings go on being stored; only an operator moves a device."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from device_profiles.wire import (
    QOS,
    AgentState,
    Channel,
    DeviceInfo,
    Reading,
    TelemetryBatch,
    encode,
    topic,
)
from iot_runtime.mqtt import MqttSettings, make_client
from tests.helpers import announce_agent, eventually, hub_settings, running_hub

pytestmark = pytest.mark.integration


def _batch(agent_id: str, device_id: str, seq: int, power: float) -> bytes:
    now = time.time_ns() // 1_000_000
    reading = Reading(device_id=device_id, ts=now, values={"power": power})
    return encode(TelemetryBatch(agent_id=agent_id, seq=seq, readings=[reading]))


async def test_an_agent_announcing_another_agents_device_is_refused_audited_and_alarmed(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    owner, thief, pole = f"owner-{unique_id}", f"thief-{unique_id}", f"pole-{unique_id}"
    async with (
        running_hub(settings) as hub,
        make_client(mqtt, f"c-{owner}", persistent_session=False) as a,
        make_client(mqtt, f"c-{thief}", persistent_session=False) as b,
    ):
        await announce_agent(a, hub.api, owner, pole, retain=False)
        await announce_agent(b, hub.api, thief, f"own-{unique_id}", retain=False)
        claim = AgentState(
            agent_id=thief,
            state="online",
            devices=[DeviceInfo(device_id=pole, profile="smart_pole")],
        )
        await b.publish(topic(thief, Channel.STATE), encode(claim), qos=QOS)

        async def alarmed() -> dict[str, Any] | None:
            found = (await hub.api.get("/api/v1/alarms", params={"device_id": pole})).json()
            hits = [x for x in found["items"] if x["rule"] == "device_claim_refused"]
            return hits[0] if hits else None

        alarm = await eventually(alarmed, timeout=20)
        assert alarm["agent_id"] == thief and alarm["severity"] == "critical"
        assert owner in alarm["message"]
        device = (await hub.api.get(f"/api/v1/devices/{pole}")).json()
        assert device["agent_id"] == owner
        audit = (await hub.api.get("/api/v1/audit", params={"target": f"device:{pole}"})).json()
        assert any(
            row["action"] == "device.claim_refused" and row["actor"] == f"agent:{thief}"
            for row in (audit["items"] if isinstance(audit, dict) else audit)
        ), audit

        # the owner's readings are still taken, the thief's forged ones are not
        await a.publish(topic(owner, Channel.TELEMETRY), _batch(owner, pole, 1, 11.0), qos=QOS)
        await b.publish(topic(thief, Channel.TELEMETRY), _batch(thief, pole, 1, 99.0), qos=QOS)

        async def latest_is_owners() -> bool | None:
            response = await hub.api.get(f"/api/v1/devices/{pole}/telemetry/latest")
            points = response.json()["points"]
            return True if points.get("power", {}).get("value") == 11.0 else None

        await eventually(latest_is_owners, timeout=20)

        async def thief_dead_lettered() -> bool | None:
            response = await hub.api.get("/api/v1/dead-letters", params={"agent_id": thief})
            return True if response.json()["items"] else None

        await eventually(thief_dead_lettered, timeout=20)
        latest = (await hub.api.get(f"/api/v1/devices/{pole}/telemetry/latest")).json()
        assert latest["points"]["power"]["value"] == 11.0

        # an operator moves it: audited, and from then on the other agent's readings count
        moved = await hub.api.post(f"/api/v1/devices/{pole}/move", json={"agent_id": thief})
        assert moved.status_code == 200, moved.text
        assert moved.json()["agent_id"] == thief
        await b.publish(topic(thief, Channel.TELEMETRY), _batch(thief, pole, 2, 42.0), qos=QOS)

        async def latest_is_movers() -> bool | None:
            response = await hub.api.get(f"/api/v1/devices/{pole}/telemetry/latest")
            return True if response.json()["points"]["power"]["value"] == 42.0 else None

        await eventually(latest_is_movers, timeout=20)
        audit = (await hub.api.get("/api/v1/audit", params={"target": f"device:{pole}"})).json()
        rows = audit["items"] if isinstance(audit, dict) else audit
        assert any(row["action"] == "device.move" for row in rows), rows
        unknown = await hub.api.post(f"/api/v1/devices/{pole}/move", json={"agent_id": "nobody"})
        assert unknown.status_code == 404
