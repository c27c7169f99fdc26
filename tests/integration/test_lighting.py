"""Lighting strategies end to end: hub + real Mosquitto + a real edge agent + simulated poles.

A strategy whose step is due a few seconds after its creation dims the poles once (the
simulators' registers say so), its firing is listed with the command group, whose progress
shows every command succeeded; a hub restart does not fire it again.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cloud_hub.api.keys import create_api_key
from cloud_hub.lighting import LightingScheduler, LightingSettings, LightingStore, StrategySpec
from cloud_hub.registry import CommandGroupRow, Registry, utcnow
from cloud_hub.settings import ApiSettings, HubSettings
from tests.harness import free_port
from tests.helpers import (
    RunningHub,
    devices_registered,
    eventually,
    hub_settings,
    poles_behind_an_agent,
    running_hub,
)

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _soon(seconds: float) -> str:
    """A local Shanghai clock time ``seconds`` from now, as a step's ``at``."""
    return (datetime.now(SHANGHAI) + timedelta(seconds=seconds)).strftime("%H:%M:%S")


async def _firings(hub: RunningHub, strategy_id: str) -> list[dict[str, Any]]:
    response = await hub.api.get(f"/api/v1/lighting/strategies/{strategy_id}/firings")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def _fired(hub: RunningHub, strategy_id: str) -> dict[str, Any]:
    async def sent() -> dict[str, Any] | None:
        items = await _firings(hub, strategy_id)
        return items[0] if items and items[0]["outcome"] != "sending" else None

    return await eventually(sent)


async def _group_done(hub: RunningHub, group_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (await hub.api.get(f"/api/v1/command-groups/{group_id}")).json()
        return body if body["done"] else None

    return await eventually(done)


async def _site_key(settings: HubSettings, site: str) -> str:
    registry = Registry(settings.registry_url)
    await registry.start()
    try:
        return (await create_api_key(registry, f"technician {site}", "technician", site))[1]
    finally:
        await registry.close()


async def test_a_strategy_dims_the_poles_once_at_its_time_and_not_again_after_a_restart(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    ids = [f"pole-{i}-{unique_id}" for i in range(2)]
    async with poles_behind_an_agent(
        settings.mqtt, tmp_path / "agent", f"road-{unique_id}", ids
    ) as poles:
        sims = poles.sims
        async with running_hub(settings) as hub:
            keys = hub.keys
            await devices_registered(hub.api, ids)
            body = {
                "name": "ring road test night",
                "selector": {"device_ids": ids},
                "timezone": "Asia/Shanghai",
                "steps": [{"at": _soon(4), "command": "set_dimming", "params": {"level": 35}}],
            }
            # checked against the poles' profile: refused with the step named
            refused = await hub.api.post(
                "/api/v1/lighting/strategies",
                json={
                    **body,
                    "steps": [{"at": "23:30", "command": "set_dimming", "params": {"level": 140}}],
                },
            )
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"].startswith("steps[0]: ")
            assert "above the maximum 100" in refused.json()["detail"]
            invalid = await hub.api.post(
                "/api/v1/lighting/strategies",
                json={**body, "steps": [{"at": "25:00", "command": "lamp_on"}]},
            )
            assert invalid.status_code == 422
            assert invalid.json()["detail"].startswith(
                "body.steps[0].at: Value error, '25:00' is neither a clock time"
            )
            viewer = {"Authorization": f"Bearer {keys['viewer']}"}
            forbidden = await hub.api.post("/api/v1/lighting/strategies", json=body, headers=viewer)
            assert forbidden.status_code == 403

            created = await hub.api.post("/api/v1/lighting/strategies", json=body)
            assert created.status_code == 201, created.text
            strategy = created.json()
            strategy_id = strategy["strategy_id"]

            # a key scoped to another site: its strategies select within its site only,
            # and it does not see the others
            technician = {"Authorization": f"Bearer {await _site_key(settings, 'elsewhere')}"}
            confined = await hub.api.post(
                "/api/v1/lighting/strategies", json=body, headers=technician
            )
            assert confined.status_code == 422, confined.text
            assert "picks no device" in confined.json()["detail"]
            outside = await hub.api.post(
                "/api/v1/lighting/strategies",
                json={**body, "selector": {"site": "ring-road"}},
                headers=technician,
            )
            assert outside.status_code == 403
            hidden = await hub.api.get(
                f"/api/v1/lighting/strategies/{strategy_id}", headers=technician
            )
            assert hidden.status_code == 404
            listed = await hub.api.get("/api/v1/lighting/strategies", headers=technician)
            assert listed.json() == []
            assert strategy["next_firing"]["command"] == "set_dimming"
            preview = await hub.api.get(
                f"/api/v1/lighting/strategies/{strategy_id}/preview",
                params={"hours": 48},
                headers=viewer,
            )
            assert preview.status_code == 200
            planned = preview.json()["firings"]
            assert len(planned) == 2 and planned[0]["at_local"].endswith("+08:00")

            firing = await _fired(hub, strategy_id)
            assert firing["outcome"] == "sent", firing
            group = await _group_done(hub, firing["group_id"])
            assert group["by_status"] == {"succeeded": 2}
            assert all(sim.image.get("dimming") == 35 for sim in sims)
            metrics = (await hub.api.get("/metrics")).text
            assert 'hub_lighting_firings_total{outcome="sent"} 1.0' in metrics
            assert "hub_lighting_strategies 1.0" in metrics

            audit = (await hub.api.get("/api/v1/audit")).json()
            assert any(e["action"] == "lighting_strategy.create" for e in audit["items"])

        # the hub restarts after the firing (within catch_up_s): it does not fire again
        again = settings.model_copy(update={"api": ApiSettings(port=free_port())})
        async with running_hub(again, keys) as hub:
            # a second strategy, due soon: once it has fired, the scheduler has run
            # its rounds after the restart
            second = await hub.api.post(
                "/api/v1/lighting/strategies",
                json={
                    **body,
                    "name": "second",
                    "steps": [{"at": _soon(3), "command": "set_dimming", "params": {"level": 60}}],
                },
            )
            assert second.status_code == 201, second.text
            later = await _fired(hub, second.json()["strategy_id"])
            assert later["outcome"] == "sent"
            await _group_done(hub, later["group_id"])
            assert [f["group_id"] for f in await _firings(hub, strategy_id)] == [firing["group_id"]]
            assert all(sim.image.get("dimming") == 60 for sim in sims)

            # apply-now: this strategy's step is in effect (its instant is the latest): sent again
            applied = await hub.api.post(f"/api/v1/lighting/strategies/{strategy_id}/apply-now")
            assert applied.status_code == 202, applied.text
            assert applied.json()["in_effect"]["params"] == {"level": 35}
            group = await _group_done(hub, applied.json()["firing"]["group_id"])
            assert group["by_status"] == {"succeeded": 2}
            assert all(sim.image.get("dimming") == 35 for sim in sims)
            history = await _firings(hub, strategy_id)
            assert [f["trigger"] for f in history] == ["apply_now", "schedule"]

            deleted = await hub.api.delete(f"/api/v1/lighting/strategies/{strategy_id}")
            assert deleted.status_code == 204
            gone = await hub.api.get(f"/api/v1/lighting/strategies/{strategy_id}")
            assert gone.status_code == 404


class SlowHub:
    """Sends nothing, slowly: two schedulers overlap while one of them is sending."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_group_command(
        self,
        selector: dict[str, Any],
        name: str,
        params: dict[str, Any],
        ttl_s: float | None = None,
        created_by: str = "",
    ) -> CommandGroupRow:
        self.sent.append(created_by)
        await asyncio.sleep(0)  # let the other scheduler run its claim meanwhile
        return CommandGroupRow(
            group_id=uuid.uuid4().hex,
            name=name,
            params=params,
            selector=selector,
            rejected={},
            created_by=created_by,
            created_at=utcnow(),
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_leaders_racing_for_a_step_send_it_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Two schedulers (an old leader that has not noticed it lost the lease, and the new one)
    on one registry, at the same instant: the UNIQUE firing lets one of them send."""
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        if backend == "sqlite"
        else str(request.getfixturevalue("pg_url"))
    )
    registries = [Registry(url), Registry(url)]
    for registry in registries:
        await registry.start()
    try:
        store_a, store_b = (LightingStore(r) for r in registries)
        spec = StrategySpec.model_validate(
            {
                "name": "race",
                "selector": {"site": "ring-road"},
                "steps": [
                    {"at": f"{hour:02d}:00", "command": "set_dimming", "params": {"level": 50}}
                    for hour in range(24)
                ],
            }
        )
        row = await store_a.create(spec, created_by="k1")
        now = utcnow()
        due = now.replace(minute=0, second=0, microsecond=0)
        async with registries[0].session.begin() as db:
            stored = await db.merge(row)
            stored.updated_at = due - timedelta(seconds=1)
        hub = SlowHub()
        settings = LightingSettings(catch_up_s=3600)
        a, b = LightingScheduler(store_a, hub, settings), LightingScheduler(store_b, hub, settings)
        await asyncio.gather(a.tick(now), b.tick(now), a.tick(now), b.tick(now))
        assert hub.sent == [f"strategy:{row.strategy_id}"]
        [firing] = await store_b.firings(row.strategy_id, 10)
        assert firing.outcome == "sent" and firing.scheduled_for.replace(tzinfo=UTC) == due
    finally:
        for registry in registries:
            await registry.close()


async def _command(hub: RunningHub, device_id: str, name: str, **params: Any) -> dict[str, Any]:
    response = await hub.api.post(
        f"/api/v1/devices/{device_id}/commands", json={"name": name, "params": params}
    )
    assert response.status_code == 202, response.text
    command_id = response.json()["command_id"]

    async def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = (await hub.api.get(f"/api/v1/commands/{command_id}")).json()
        return body if body["status"] not in {"queued", "sent", "delivered"} else None

    done = await eventually(finished)
    assert done["status"] == "succeeded", done
    return done


async def _latest(hub: RunningHub, device_id: str, **wanted: Any) -> dict[str, Any]:
    """The hub's latest values once they show ``wanted`` (``power=...`` a predicate)."""

    async def shown() -> dict[str, Any] | None:
        response = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
        if response.status_code != 200:
            return None
        values = {k: v["value"] for k, v in response.json()["points"].items()}
        for point, want in wanted.items():
            ok = want(values.get(point)) if callable(want) else values.get(point) is want
            if not ok:
                return None
        return values

    return await eventually(shown)


async def test_the_documented_strategy_lights_the_street_and_its_preview_says_so(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    """docs/operations.md: lamps on at 100 % at sunset, 50 % at 23:30, off at sunrise. A level
    means what lighting controllers mean (uCIFI, TALQ): after lamp_off, set_dimming 100 turns
    the lamp on at 100 % (real simulator: relay on, power drawn); set_dimming 0 turns it off."""
    settings = hub_settings(mosquitto, tmp_path, unique_id)
    device_id = f"pole-{unique_id}"
    async with (
        running_hub(settings) as hub,
        poles_behind_an_agent(
            settings.mqtt, tmp_path / "agent", f"road-{unique_id}", [device_id]
        ) as poles,
    ):
        sim = poles.sims[0]
        await devices_registered(hub.api, [device_id])
        await _command(hub, device_id, "lamp_off")
        await _latest(hub, device_id, lamp_on=False, power=lambda w: w == 0)
        done = await _command(hub, device_id, "set_dimming", level=100)
        assert done["detail"] == "wrote and verified dimming=100, lamp_on=True"
        assert sim.image.get("lamp_on") is True and sim.image.get("power") > 100
        await _latest(
            hub, device_id, lamp_on=True, dimming=lambda d: d == 100, power=lambda w: w > 100
        )
        await _command(hub, device_id, "set_dimming", level=0)
        assert sim.image.get("lamp_on") is False and sim.image.get("power") == 0
        await _latest(hub, device_id, lamp_on=False, power=lambda w: w == 0)

        # the example of docs/operations.md, as written there, on this pole
        text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
        section = text.split("## Lighting strategies", 1)[1]
        documented = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
        documented["selector"] = {"device_ids": [device_id]}
        created = await hub.api.post("/api/v1/lighting/strategies", json=documented)
        assert created.status_code == 201, created.text
        strategy_id = created.json()["strategy_id"]
        preview = await hub.api.get(f"/api/v1/lighting/strategies/{strategy_id}/preview")
        assert preview.status_code == 200, preview.text
        states = {f["step"]: f["state"] for f in preview.json()["firings"]}
        assert states == {
            0: {"smart_pole": {"dimming": 100, "lamp_on": True}},
            1: {"smart_pole": {"dimming": 50, "lamp_on": True}},
            2: {"smart_pole": {"dimming": 50, "lamp_on": False}},
        }
