"""Commands to many devices at once (aggregated progress), and cancelling a command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    devices_registered,
    eventually,
    hub_settings,
    poles_behind_an_agent,
    running_hub,
)

pytestmark = pytest.mark.integration


async def test_group_command_dims_every_selected_pole_and_cancel_stops_a_queued_one(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    ids = [f"pole-{i}-{unique_id}" for i in range(3)]
    async with (
        poles_behind_an_agent(settings.mqtt, tmp_path / "agent", f"road-{unique_id}", ids) as poles,
        running_hub(settings) as hub,
    ):
        sims = poles.sims
        await devices_registered(hub.api, ids)
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
        await poles.stop_agent()
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
