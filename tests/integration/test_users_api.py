"""Changing a person's role, site and language: ``PATCH /api/v1/users/{username}`` with API
keys (unscoped, site-scoped, a viewer's), and the console's form route as a signed-in person.

Only the fields given change; a new role or site ends the person's sessions, a new language
does not; a site-scoped admin key edits its site's people only and moves nobody elsewhere;
an administrator cannot take their own admin role or change their own site; every change is
audited as ``user.update`` with its before and after.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.api.keys import create_api_key
from cloud_hub.console.accounts import Accounts
from cloud_hub.registry import Registry
from tests.harness.browser import PASSWORD, create_people
from tests.helpers import hub_settings, make_keys, running_hub

pytestmark = pytest.mark.integration


@dataclass
class Rig:
    api: httpx.AsyncClient  # with an unscoped admin key
    accounts: Accounts  # the hub's registry, from outside (sessions made and checked here)
    north: dict[str, str]  # headers of an admin key of site north
    viewer: dict[str, str]  # headers of a viewer key

    async def signed_in(self, username: str) -> str:
        return (await self.accounts.sign_in(username, PASSWORD, "127.0.0.1")).token

    async def audited(self, target: str) -> list[dict[str, Any]]:
        response = await self.api.get(
            "/api/v1/audit", params={"action": "user.update", "target": target}
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return [e for e in items if e["target"] == target]


@contextlib.asynccontextmanager
async def running(broker: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    settings = hub_settings(broker, tmp_path, unique_id)
    await create_people(settings)
    keys = await make_keys(settings.registry_url, "admin", "viewer")
    registry = Registry(settings.registry_url)
    await registry.start()
    try:
        north = (await create_api_key(registry, "north admin", "admin", "north"))[1]
        async with running_hub(settings, keys) as hub:
            yield Rig(
                hub.api,
                Accounts(registry),
                {"Authorization": f"Bearer {north}"},
                {"Authorization": f"Bearer {keys['viewer']}"},
            )
    finally:
        await registry.close()


@pytest.fixture
async def rig(private_mosquitto: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    async with running(private_mosquitto, tmp_path, unique_id) as rig:
        yield rig


async def test_only_the_fields_given_change_and_a_new_role_ends_the_sessions(rig: Rig) -> None:
    eve = await rig.signed_in("eve")  # a viewer, in English, of every site

    # a new language alone: the session goes on
    response = await rig.api.patch("/api/v1/users/eve", json={"language": "zh"})
    assert response.status_code == 200, response.text
    assert response.json() | {"created_at": None, "password_changed_at": None} == {
        "username": "eve",
        "role": "viewer",
        "site": None,
        "language": "zh",
        "created_at": None,
        "password_changed_at": None,
        "disabled_at": None,
    }
    assert await rig.accounts.session(eve) is not None

    # the same again: nothing changes, nothing is audited
    assert (await rig.api.patch("/api/v1/users/eve", json={"language": "zh"})).status_code == 200
    assert (await rig.api.patch("/api/v1/users/eve", json={})).status_code == 200
    assert len(await rig.audited("user:eve")) == 1

    # a new role: every session of hers ends; she signs in again as an operator
    response = await rig.api.patch("/api/v1/users/eve", json={"role": "operator"})
    assert response.status_code == 200, response.text
    assert (response.json()["role"], response.json()["language"]) == ("operator", "zh")
    assert await rig.accounts.session(eve) is None
    found = await rig.accounts.session(await rig.signed_in("eve"))
    assert found is not None and found[0].role == "operator"

    # a site, then every site again (null): each ends the sessions
    again = await rig.signed_in("eve")
    response = await rig.api.patch("/api/v1/users/eve", json={"site": "south"})
    assert (response.status_code, response.json()["site"]) == (200, "south"), response.text
    assert await rig.accounts.session(again) is None
    response = await rig.api.patch("/api/v1/users/eve", json={"site": None})
    assert (response.status_code, response.json()["site"]) == (200, None), response.text

    keys = (await rig.api.get("/api/v1/api-keys")).json()
    admin = next(k["key_id"] for k in keys if k["name"] == "test admin")
    entries = await rig.audited("user:eve")  # newest first
    assert [(e["actor"], e["detail"]) for e in entries] == [
        (admin, {"before": {"site": "south"}, "after": {"site": None}}),
        (admin, {"before": {"site": None}, "after": {"site": "south"}}),
        (admin, {"before": {"role": "viewer"}, "after": {"role": "operator"}}),
        (admin, {"before": {"language": "en"}, "after": {"language": "zh"}}),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"role": "superuser"},
        {"role": None},
        {"language": "fr"},
        {"language": None},
        {"site": "x" * 65},
        {"password": "a long password"},  # extra="forbid": not this route's
        {"username": "evelyn"},
    ],
    ids=lambda b: ",".join(f"{k}={str(v)[:8]}" for k, v in b.items()),
)
async def test_invalid_changes_are_refused_with_422(rig: Rig, body: dict[str, Any]) -> None:
    response = await rig.api.patch("/api/v1/users/eve", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    eve = next(u for u in (await rig.api.get("/api/v1/users")).json() if u["username"] == "eve")
    assert (eve["role"], eve["site"], eve["language"]) == ("viewer", None, "en")
    assert await rig.audited("user:eve") == []


async def test_a_site_scoped_admin_edits_its_sites_people_only(rig: Rig) -> None:
    # another site's person, or one of every site: as if missing
    for name in ("eve", "ops", "root", "nobody"):
        response = await rig.api.patch(
            f"/api/v1/users/{name}", json={"language": "en"}, headers=rig.north
        )
        assert response.status_code == 404, (name, response.text)
    # its own site's: yes, but not to another site, nor to every site
    for site in ("south", None):
        response = await rig.api.patch(
            "/api/v1/users/north-ops", json={"site": site}, headers=rig.north
        )
        assert response.status_code == 403, (site, response.text)
        assert "limited to site 'north'" in response.json()["detail"]
    response = await rig.api.patch(
        "/api/v1/users/north-ops",
        json={"site": "north", "role": "technician"},
        headers=rig.north,
    )
    assert response.status_code == 200, response.text
    assert (response.json()["site"], response.json()["role"]) == ("north", "technician")
    # a viewer key changes nobody
    response = await rig.api.patch(
        "/api/v1/users/north-ops", json={"language": "en"}, headers=rig.viewer
    )
    assert response.status_code == 403, response.text
    users = {u["username"]: u for u in (await rig.api.get("/api/v1/users")).json()}
    assert (users["eve"]["language"], users["ops"]["language"]) == ("en", "zh")
    assert users["north-ops"]["language"] == "zh"


async def test_a_signed_in_admin_cannot_lock_themselves_out_in_the_console(rig: Rig) -> None:
    """The console's form route (the API's update route as the person): not one's own admin
    role or site; one's own language, yes (and the session goes on)."""
    signed = await rig.accounts.sign_in("root", PASSWORD, "127.0.0.1")
    base = str(rig.api.base_url)
    async with httpx.AsyncClient(
        base_url=base, cookies={"hub_session": signed.token}, timeout=10
    ) as console:
        form = {"csrf_token": signed.csrf_token, "role": "admin", "site": "", "language": "zh"}
        for change in ({"role": "operator"}, {"site": "north"}):
            response = await console.post("/users/root", data=form | change)
            assert response.status_code == 403, (change, response.text)
            assert "you would lock yourself out" in response.text
        assert (
            await console.post("/users/root", data=form | {"csrf_token": "x"})
        ).status_code == 403
        response = await console.post("/users/root", data=form | {"language": "en"})
        assert response.status_code == 303, response.text
        assert response.headers["location"].startswith("/users?saved=root")
        assert await rig.accounts.session(signed.token) is not None  # still signed in
        page = await console.get("/users?saved=root")
        assert page.status_code == 200 and "Saved: root" in page.text  # now in English
        # an invalid role from a forged form: the page again, with the reason
        response = await console.post("/users/eve", data=form | {"role": "superuser"})
        assert response.status_code == 400 and "eve: role" in response.text, response.text
        response = await console.post("/users/nobody", data=form)
        assert response.status_code == 404
    root = (await rig.api.get("/api/v1/users")).json()
    assert {u["username"]: (u["role"], u["site"]) for u in root}["root"] == ("admin", None)
    entries = await rig.audited("user:root")
    assert [(e["actor"], e["detail"]) for e in entries] == [
        ("user:root", {"before": {"language": "zh"}, "after": {"language": "en"}})
    ]
