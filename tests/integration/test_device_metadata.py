"""``PATCH /api/v1/devices/{id}``: a device's site, pole, mount position, position and tags.

Only the fields given change (``null`` clears one); the change is audited as ``device.update``
with each changed field's value before and after, as the caller; technicians of a site and
admins only; a site-scoped key sees another site's device as missing (404) and can neither
move a device to another site nor clear its site (403); a refused body says which field and
why (422) and changes nothing; after a site change, the hub's site directories (the event
stream's, the webhooks') answer with the new site at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.api.app import create_app
from cloud_hub.api.keys import create_api_key
from cloud_hub.hub import Hub
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from cloud_hub.settings import HubSettings
from tests.helpers import hub_settings, running_hub

pytestmark = pytest.mark.integration

NORTH_POLE, SOUTH_POLE = "pole-n1", "pole-s1"
PROBLEM_JSON = "application/problem+json"


async def _seed(registry_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """A pole of site north and one of site south (each behind its agent), and keys: the
    secrets by name, and their key ids by name."""
    registry = Registry(registry_url)
    await registry.start()
    try:
        now = utcnow()
        async with registry.session.begin() as db:
            for agent in ("agent-n", "agent-s"):
                db.add(AgentRow(agent_id=agent, state="online", created_at=now))
            await db.flush()
            for device_id, agent, site in (
                (NORTH_POLE, "agent-n", "north"),
                (SOUTH_POLE, "agent-s", "south"),
            ):
                db.add(
                    DeviceRow(
                        device_id=device_id,
                        agent_id=agent,
                        profile="smart_pole",
                        status="online",
                        site=site,
                        pole="P-01",
                        tags={"road": "G205"},
                        created_at=now,
                    )
                )
        secrets: dict[str, str] = {}
        ids: dict[str, str] = {}
        for name, role, site in (
            ("admin", "admin", None),
            ("viewer", "viewer", None),
            ("operator", "operator", "north"),
            ("north-tech", "technician", "north"),
            ("tech", "technician", None),
        ):
            row, secret = await create_api_key(registry, name, role, site)  # type: ignore[arg-type]
            secrets[name], ids[name] = secret, row.key_id
        return secrets, ids
    finally:
        await registry.close()


def _as(keys: dict[str, str], name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys[name]}"}


async def _updates(api: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/audit", params={"action": "device.update"})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_site_technician_edits_a_device_and_the_audit_says_who_and_what(
    private_mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    keys, ids = await _seed(settings.registry_url)
    async with running_hub(settings, keys) as hub:
        api, tech = hub.api, _as(keys, "north-tech")
        url = f"/api/v1/devices/{NORTH_POLE}"
        change = {
            "pole": "P-07",
            "mount_position": "arm-2",
            "lat": 24.4812,
            "lon": 118.0894,
            "tags": {"road": "G205", "circuit": "C3"},
        }
        response = await api.patch(url, json=change, headers=tech)
        assert response.status_code == 200, response.text
        device = response.json()
        assert {k: device[k] for k in change} == change
        assert device["site"] == "north"  # not given: unchanged
        assert (await api.get(url)).json() == device

        [entry] = await _updates(api)
        assert entry["actor"] == ids["north-tech"] and entry["target"] == f"device:{NORTH_POLE}"
        assert entry["detail"] == {  # the fields that changed (road=G205 was already there)
            "before": {
                "pole": "P-01",
                "mount_position": None,
                "lat": None,
                "lon": None,
                "tags": {"road": "G205"},
            },
            "after": change,
        }

        # null clears a field; the others stay; tags are replaced as a whole
        response = await api.patch(
            url, json={"mount_position": None, "tags": {"kind": "lamp"}}, headers=tech
        )
        assert response.status_code == 200, response.text
        device = response.json()
        assert device["mount_position"] is None and device["tags"] == {"kind": "lamp"}
        assert (device["pole"], device["lat"], device["lon"]) == ("P-07", 24.4812, 118.0894)
        response = await api.patch(url, json={"lat": None, "lon": None}, headers=tech)
        assert (response.json()["lat"], response.json()["lon"]) == (None, None)
        assert len(await _updates(api)) == 3

        # the same values again: nothing changes, nothing is audited
        response = await api.patch(url, json={"pole": "P-07", "site": "north"}, headers=tech)
        assert response.status_code == 200, response.text
        assert len(await _updates(api)) == 3


async def test_a_site_scoped_key_cannot_reach_or_move_devices_out_of_its_site(
    private_mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    keys, _ = await _seed(settings.registry_url)
    async with running_hub(settings, keys) as hub:
        api, tech = hub.api, _as(keys, "north-tech")
        south = f"/api/v1/devices/{SOUTH_POLE}"
        assert (await api.get(south, headers=tech)).status_code == 404
        response = await api.patch(south, json={"pole": "P-99"}, headers=tech)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        assert (await api.get(south)).json()["pole"] == "P-01"

        north = f"/api/v1/devices/{NORTH_POLE}"
        moved = await api.patch(north, json={"site": "south", "pole": "P-99"}, headers=tech)
        assert moved.status_code == 403, moved.text
        assert moved.headers["content-type"] == PROBLEM_JSON
        assert "limited to site 'north'" in moved.json()["detail"]
        cleared = await api.patch(north, json={"site": None}, headers=tech)
        assert cleared.status_code == 403, cleared.text
        assert "may not clear a device's site" in cleared.json()["detail"]
        device = (await api.get(north)).json()
        assert (device["site"], device["pole"]) == ("north", "P-01")  # nothing changed
        assert await _updates(api) == []

        # an unscoped admin moves it; from then on the north key does not see it
        response = await api.patch(north, json={"site": "south"})
        assert response.status_code == 200 and response.json()["site"] == "south"
        assert (await api.get(north, headers=tech)).status_code == 404
        [entry] = await _updates(api)
        assert entry["detail"] == {"before": {"site": "north"}, "after": {"site": "south"}}


async def test_only_technicians_of_a_site_and_admins_may_edit(
    private_mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    keys, _ = await _seed(settings.registry_url)
    async with running_hub(settings, keys) as hub:
        api = hub.api
        url = f"/api/v1/devices/{NORTH_POLE}"
        for name, reason in (
            ("viewer", "role 'viewer' may not provision"),
            ("operator", "role 'operator' may not provision"),
            ("tech", "a technician key without a site may not edit devices"),
        ):
            response = await api.patch(url, json={"pole": "P-66"}, headers=_as(keys, name))
            assert response.status_code == 403, (name, response.text)
            assert response.headers["content-type"] == PROBLEM_JSON
            assert response.json()["detail"] == reason
        async with httpx.AsyncClient(base_url=str(api.base_url)) as anonymous:
            assert (await anonymous.patch(url, json={"pole": "P-66"})).status_code == 401
        assert (await api.get(url)).json()["pole"] == "P-01"
        assert await _updates(api) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"lat": 24.5}, "lat without lon: give lat and lon together"),
        ({"lon": 118.1}, "lon without lat: give lat and lon together"),
        ({"lat": 24.5, "lon": None}, "lat and lon are both numbers or both null"),
        ({"lat": 91, "lon": 118.1}, "lat: Input should be less than or equal to 90"),
        ({"lat": 24.5, "lon": -180.5}, "lon: Input should be greater than or equal to -180"),
        ({"pole": ""}, "pole: String should have at least 1 character"),
        ({"site": "x" * 65}, "site: String should have at most 64 characters"),
        ({"tags": {"road name": "G205"}}, "String should match pattern"),
        ({"tags": {"road": "x" * 65}}, "tags.road: String should have at most 64 characters"),
        ({"tags": {f"k{i}": "v" for i in range(33)}}, "tags: Dictionary should have at most 32"),
        ({"tags": {"road": 205}}, "tags.road: Input should be a valid string"),
        ({"agent_id": "agent-s"}, "agent_id: Extra inputs are not permitted"),
    ],
    ids=[
        "lat-alone",
        "lon-alone",
        "lat-and-null-lon",
        "lat-range",
        "lon-range",
        "empty-pole",
        "long-site",
        "tag-key",
        "tag-value",
        "too-many-tags",
        "tag-not-text",
        "unknown-field",
    ],
)
async def test_invalid_metadata_is_refused_with_the_field_and_the_reason(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, body: dict[str, Any], reason: str
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    keys, _ = await _seed(settings.registry_url)
    async with running_hub(settings, keys) as hub:
        url = f"/api/v1/devices/{NORTH_POLE}"
        before = (await hub.api.get(url)).json()
        response = await hub.api.patch(url, json=body, headers=_as(keys, "north-tech"))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == PROBLEM_JSON
        assert reason in response.json()["detail"]
        assert (await hub.api.get(url)).json() == before
        assert await _updates(hub.api) == []


@contextlib.asynccontextmanager
async def _in_process(settings: HubSettings) -> AsyncIterator[tuple[Any, Hub, httpx.AsyncClient]]:
    """The hub's app with its lifespan run in this event loop: (app, hub, a client of it)."""
    hub = Hub(settings)
    app = create_app(settings, hub)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as api,
    ):
        yield app, hub, api


async def test_a_site_change_reaches_the_site_directories_at_once(
    private_mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    """The event stream's and the webhooks' snapshots of who is where (kept 5 s) are re-read
    after a device changes site, so no event of the moved device goes to the old site."""
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    keys, _ = await _seed(settings.registry_url)
    async with _in_process(settings) as (app, hub, api):
        directories = (app.state.sites, hub.webhooks.sites)
        for directory in directories:
            assert (await directory.current()).of_device[NORTH_POLE] == "north"
        response = await api.patch(
            f"/api/v1/devices/{NORTH_POLE}", json={"site": "south"}, headers=_as(keys, "admin")
        )
        assert response.status_code == 200, response.text
        for directory in directories:
            assert (await directory.current()).of_device[NORTH_POLE] == "south"
