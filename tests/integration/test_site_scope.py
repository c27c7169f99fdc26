"""Site scope everywhere: every route of the app, and every event channel, against a key (and a
webhook) scoped to one site, with objects of another site.

The route test enumerates the app's routes and fails on one that is neither checked here nor
listed as exempt with a reason, so a new route cannot forget its object-level check. Each
check asks as the site-scoped key (an *admin* key of site ``north``, so no role stops it before
the scope does) for objects of site ``south`` — out of scope must look missing (404) and lists
leave them out — and then asks the same as an unscoped admin key, to show the object is there
and the 404 came from the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import uvicorn
from fastapi import routing

from cloud_hub.alarms import AlarmRow
from cloud_hub.api.app import create_app
from cloud_hub.api.keys import create_api_key
from cloud_hub.dead_letters.models import DeadLetterRow
from cloud_hub.events.bus import EventKind, HubEvent
from cloud_hub.events.webhooks import WebhookSettings
from cloud_hub.hub import Hub
from cloud_hub.provisioning.models import AgentCredentialRow
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.harness.webhook_receiver import WebhookReceiver
from tests.helpers import eventually

pytestmark = pytest.mark.integration

NORTH, SOUTH = "north", "south"
#: per site: its agent and its smart pole
AGENT = {NORTH: "agent-north", SOUTH: "agent-south"}
DEVICE = {NORTH: "pole-north", SOUTH: "pole-south"}


@dataclass
class Rig:
    hub: Hub
    api: httpx.AsyncClient
    admin: dict[str, str]  # headers of an unscoped admin key
    scoped: dict[str, str]  # headers of an admin key of site north

    # -- objects of a site ----------------------------------------------------------------

    async def alarm(self, site: str, *, whole_agent: bool = False) -> str:
        alarm_id = uuid.uuid4().hex
        async with self.hub.registry.session.begin() as db:
            db.add(
                AlarmRow(
                    alarm_id=alarm_id,
                    device_id=None if whole_agent else DEVICE[site],
                    agent_id=AGENT[site],
                    rule="agent_offline" if whole_agent else "tilt_exceeded",
                    severity="major",
                    state="active",
                    raised_at=utcnow(),
                    value=None,
                    message=f"{site} alarm",
                )
            )
        return alarm_id

    async def dead_letter(self, site: str | None) -> int:
        agent = AGENT[site] if site is not None else None
        row = DeadLetterRow(
            received_at=utcnow(),
            source=f"iot/v1/{agent or 'unknown'}/telemetry",
            agent_id=agent,
            reason=f"{site} refused",
            payload=b"{}",
            payload_size=2,
        )
        async with self.hub.registry.session.begin() as db:
            db.add(row)
        return row.id

    async def command(self, site: str) -> str:
        command_id = uuid.uuid4().hex
        await self.hub.registry.add_command(
            Registry.command_row(
                command_id=command_id,
                device_id=DEVICE[site],
                agent_id=AGENT[site],
                name="lamp_on",
                params={},
                status="queued",
                expires_at_ms=int((utcnow() + timedelta(hours=1)).timestamp() * 1000),
                group_id=None,
            )
        )
        return command_id

    async def created(self, path: str, body: dict[str, Any], id_field: str) -> str:
        response = await self.api.post(path, json=body, headers=self.admin)
        assert response.status_code < 300, response.text
        value: str = response.json()[id_field]
        return value

    async def group(self, site: str) -> str:
        body = {"selector": {"site": site}, "name": "lamp_on", "params": {}}
        return await self.created("/api/v1/command-groups", body, "group_id")

    async def strategy(self, site: str) -> str:
        return await self.created("/api/v1/lighting/strategies", strategy(site), "strategy_id")

    async def webhook(self, site: str) -> str:
        body = {"url": "http://127.0.0.1:9/hook", "site": site}
        return await self.created("/api/v1/webhooks", body, "webhook_id")

    async def token(self, site: str) -> str:
        return await self.created("/api/v1/provisioning/tokens", {"site": site}, "token_id")

    async def user(self, site: str) -> str:
        name = f"{site}-person-{uuid.uuid4().hex[:6]}"
        body = {"username": name, "password": "a long password", "role": "viewer", "site": site}
        return await self.created("/api/v1/users", body, "username")

    async def api_key(self, site: str) -> str:
        return (await create_api_key(self.hub.registry, f"{site} tech", "technician", site))[
            0
        ].key_id


def strategy(site: str) -> dict[str, Any]:
    return {
        "name": f"{site} nights",
        "selector": {"site": site},
        "steps": [{"at": "00:00", "command": "set_dimming", "params": {"level": 50}}],
    }


async def _seed(hub: Hub) -> None:
    now = utcnow()
    async with hub.registry.session.begin() as db:
        for site in (NORTH, SOUTH):
            db.add(AgentRow(agent_id=AGENT[site], state="online", created_at=now))
            db.add(
                AgentCredentialRow(
                    agent_id=AGENT[site], username=f"u-{AGENT[site]}", created_at=now
                )
            )
        await db.flush()
        for site in (NORTH, SOUTH):
            db.add(
                DeviceRow(
                    device_id=DEVICE[site],
                    agent_id=AGENT[site],
                    profile="smart_pole",
                    status="online",
                    site=site,
                    created_at=now,
                )
            )
    for site in (NORTH, SOUTH):
        await hub.registry.set_desired_config(AGENT[site], {"devices": []})
    await hub.ingest.load_devices()


@contextlib.asynccontextmanager
async def running(broker: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    settings = HubSettings(
        mqtt=MqttSettings(host=broker.host, port=broker.port),
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        webhooks=WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2, max_attempts=2),
    )
    hub = Hub(settings)
    config = uvicorn.Config(
        create_app(settings, hub),
        host="127.0.0.1",
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    config.load()
    task = asyncio.create_task(server._serve())  # _serve: without uvicorn's signal handlers

    async def started() -> bool | None:
        if task.done():
            await task
            raise AssertionError("the hub's HTTP server stopped during start-up")
        return True if server.started else None

    try:
        await eventually(started, timeout=20)
        await _seed(hub)
        admin = (await create_api_key(hub.registry, "admin", "admin"))[1]
        scoped = (await create_api_key(hub.registry, "north admin", "admin", NORTH))[1]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api.port}", timeout=10
        ) as api:
            yield Rig(
                hub,
                api,
                {"Authorization": f"Bearer {admin}"},
                {"Authorization": f"Bearer {scoped}"},
            )
    finally:
        server.should_exit = True
        if not task.done():
            await asyncio.wait_for(task, timeout=60)  # a loaded machine stops slowly


@pytest.fixture
async def rig(private_mosquitto: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    async with running(private_mosquitto, tmp_path, unique_id) as rig:
        yield rig


# -- the checks, one per route ----------------------------------------------------------------

Check = Callable[[Rig], Awaitable[None]]


async def hidden(rig: Rig, method: str, path: str, **kwargs: Any) -> None:
    """Out of scope looks missing (404) to the scoped key; the unscoped admin finds it."""
    scoped = await rig.api.request(method, path, headers=rig.scoped, **kwargs)
    assert scoped.status_code == 404, f"{method} {path} as a north key: {scoped.text}"
    control = await rig.api.request(method, path, headers=rig.admin, **kwargs)
    assert control.status_code != 404 and control.status_code < 500, (
        f"{method} {path} as an unscoped admin: {control.status_code} {control.text}"
    )


async def refused(rig: Rig, method: str, path: str, **kwargs: Any) -> None:
    """Creating something of another site is refused (403) to the scoped key."""
    scoped = await rig.api.request(method, path, headers=rig.scoped, **kwargs)
    assert scoped.status_code == 403, f"{method} {path} as a north key: {scoped.text}"
    control = await rig.api.request(method, path, headers=rig.admin, **kwargs)
    assert control.status_code < 300, f"{method} {path} as an admin: {control.text}"


async def listed(
    rig: Rig, path: str, ids: Callable[[Any], set[Any]], north: Any, south: Any
) -> None:
    """A list shows the scoped key its site's objects only; the unscoped admin both."""
    scoped = await rig.api.get(path, headers=rig.scoped)
    assert scoped.status_code == 200, scoped.text
    seen = ids(scoped.json())
    assert north in seen and south not in seen, f"GET {path} as a north key: {seen}"
    control = await rig.api.get(path, headers=rig.admin)
    assert {north, south} <= ids(control.json()), f"GET {path} as an admin"


def each(field: str, key: str | None = None) -> Callable[[Any], set[Any]]:
    def ids(document: Any) -> set[Any]:
        items = document[key] if key is not None else document
        return {item[field] for item in items}

    return ids


def south_device(suffix: str = "") -> str:
    return f"/api/v1/devices/{DEVICE[SOUTH]}{suffix}"


def south_agent(suffix: str = "") -> str:
    return f"/api/v1/agents/{AGENT[SOUTH]}{suffix}"


async def _agents(rig: Rig) -> None:
    await listed(rig, "/api/v1/agents", each("agent_id"), AGENT[NORTH], AGENT[SOUTH])


async def _devices(rig: Rig) -> None:
    await listed(rig, "/api/v1/devices", each("device_id"), DEVICE[NORTH], DEVICE[SOUTH])


async def _command(rig: Rig) -> None:
    await hidden(rig, "GET", f"/api/v1/commands/{await rig.command(SOUTH)}")


async def _cancel_group(rig: Rig) -> None:
    await hidden(rig, "POST", f"/api/v1/command-groups/{await rig.group(SOUTH)}/cancel")


async def _cancel(rig: Rig) -> None:
    await hidden(rig, "POST", f"/api/v1/commands/{await rig.command(SOUTH)}/cancel")


async def _send(rig: Rig) -> None:
    await hidden(rig, "POST", south_device("/commands"), json={"name": "lamp_on", "params": {}})


async def _telemetry(rig: Rig) -> None:
    await hidden(rig, "GET", "/api/v1/telemetry", params={"device_id": DEVICE[SOUTH]})


async def _create_group(rig: Rig) -> None:
    body = {"selector": {"site": SOUTH}, "name": "lamp_on", "params": {}}
    await refused(rig, "POST", "/api/v1/command-groups", json=body)
    # a selector by device ids alone is confined to the key's site: it picks nothing there
    by_id = {"selector": {"device_ids": [DEVICE[SOUTH]]}, "name": "lamp_on", "params": {}}
    response = await rig.api.post("/api/v1/command-groups", json=by_id, headers=rig.scoped)
    assert response.status_code == 422 and "no selected device" in response.text, response.text
    control = await rig.api.post("/api/v1/command-groups", json=by_id, headers=rig.admin)
    assert control.status_code == 202 and control.json()["total"] == 1, control.text


async def _group(rig: Rig) -> None:
    await hidden(rig, "GET", f"/api/v1/command-groups/{await rig.group(SOUTH)}")


async def _alarms(rig: Rig) -> None:
    north, south = await rig.alarm(NORTH), await rig.alarm(SOUTH)
    south_agent_alarm = await rig.alarm(SOUTH, whole_agent=True)
    await listed(rig, "/api/v1/alarms?limit=1000", each("alarm_id", "items"), north, south)
    await listed(
        rig, "/api/v1/alarms?limit=1000", each("alarm_id", "items"), north, south_agent_alarm
    )
    # a page of a scoped key is full when there is enough of its site further on
    await rig.alarm(NORTH)
    for _ in range(3):
        await rig.alarm(SOUTH)
    await rig.alarm(NORTH)
    page = (await rig.api.get("/api/v1/alarms?limit=2", headers=rig.scoped)).json()
    assert len(page["items"]) == 2 and page["next_cursor"] is not None


async def _alarm(rig: Rig) -> None:
    await hidden(rig, "GET", f"/api/v1/alarms/{await rig.alarm(SOUTH)}")
    await hidden(rig, "GET", f"/api/v1/alarms/{await rig.alarm(SOUTH, whole_agent=True)}")


async def _acknowledge(rig: Rig) -> None:
    alarm_id = await rig.alarm(SOUTH)
    await hidden(rig, "POST", f"/api/v1/alarms/{alarm_id}/acknowledge", json={"note": "x"})


async def _dead_letters(rig: Rig) -> None:
    north, south = await rig.dead_letter(NORTH), await rig.dead_letter(SOUTH)
    ids = each("id", "items")
    await listed(rig, "/api/v1/dead-letters?limit=1000", ids, north, south)
    await listed(rig, "/api/v1/dead-letters?limit=1000", ids, north, await rig.dead_letter(None))


async def _dead_letter(rig: Rig) -> None:
    await hidden(rig, "GET", f"/api/v1/dead-letters/{await rig.dead_letter(SOUTH)}")


async def _replay(rig: Rig) -> None:
    await hidden(rig, "POST", f"/api/v1/dead-letters/{await rig.dead_letter(SOUTH)}/replay")


async def _delete_dead_letter(rig: Rig) -> None:
    await hidden(rig, "DELETE", f"/api/v1/dead-letters/{await rig.dead_letter(SOUTH)}")


async def _strategies(rig: Rig) -> None:
    north, south = await rig.strategy(NORTH), await rig.strategy(SOUTH)
    await listed(rig, "/api/v1/lighting/strategies", each("strategy_id"), north, south)


def _strategy_route(method: str, suffix: str = "", **kwargs: Any) -> Check:
    async def check(rig: Rig) -> None:
        path = f"/api/v1/lighting/strategies/{await rig.strategy(SOUTH)}{suffix}"
        await hidden(rig, method, path, **kwargs)

    return check


async def _create_strategy(rig: Rig) -> None:
    await refused(rig, "POST", "/api/v1/lighting/strategies", json=strategy(SOUTH))


async def _webhooks(rig: Rig) -> None:
    north, south = await rig.webhook(NORTH), await rig.webhook(SOUTH)
    await listed(rig, "/api/v1/webhooks", each("webhook_id"), north, south)


async def _create_webhook(rig: Rig) -> None:
    body = {"url": "http://127.0.0.1:9/hook", "site": SOUTH}
    await refused(rig, "POST", "/api/v1/webhooks", json=body)
    mine = await rig.api.post("/api/v1/webhooks", json={"url": body["url"]}, headers=rig.scoped)
    assert mine.status_code == 201 and mine.json()["site"] == NORTH, mine.text


async def _delete_webhook(rig: Rig) -> None:
    await hidden(rig, "DELETE", f"/api/v1/webhooks/{await rig.webhook(SOUTH)}")


async def _api_keys(rig: Rig) -> None:
    north, south = await rig.api_key(NORTH), await rig.api_key(SOUTH)
    await listed(rig, "/api/v1/api-keys", each("key_id"), north, south)


async def _create_api_key(rig: Rig) -> None:
    body = {"name": "x", "role": "viewer", "site": SOUTH}
    await refused(rig, "POST", "/api/v1/api-keys", json=body)
    unscoped = {"name": "y", "role": "admin"}
    mine = await rig.api.post("/api/v1/api-keys", json=unscoped, headers=rig.scoped)
    assert mine.status_code == 201 and mine.json()["site"] == NORTH, mine.text


async def _revoke_api_key(rig: Rig) -> None:
    await hidden(rig, "DELETE", f"/api/v1/api-keys/{await rig.api_key(SOUTH)}")


async def _tokens(rig: Rig) -> None:
    north, south = await rig.token(NORTH), await rig.token(SOUTH)
    await listed(rig, "/api/v1/provisioning/tokens", each("token_id"), north, south)


async def _create_token(rig: Rig) -> None:
    await refused(rig, "POST", "/api/v1/provisioning/tokens", json={"site": SOUTH})


async def _revoke_token(rig: Rig) -> None:
    await hidden(rig, "DELETE", f"/api/v1/provisioning/tokens/{await rig.token(SOUTH)}")


async def _bulk(rig: Rig) -> None:
    csv = (
        f"agent_id,device_id,profile,site\ncab-x-{uuid.uuid4().hex[:6]},pole-x,smart_pole,{SOUTH}\n"
    )
    headers = {"content-type": "text/csv"}
    scoped = await rig.api.post(
        "/api/v1/provisioning/bulk", content=csv, headers=rig.scoped | headers
    )
    assert scoped.status_code in (403, 422), scoped.text
    assert "outside your site" in scoped.text
    control = await rig.api.post(
        "/api/v1/provisioning/bulk", content=csv, headers=rig.admin | headers
    )
    assert control.status_code == 201, control.text


async def _users(rig: Rig) -> None:
    north, south = await rig.user(NORTH), await rig.user(SOUTH)
    await listed(rig, "/api/v1/users", each("username"), north, south)


async def _create_user(rig: Rig) -> None:
    body = {"username": "x-south", "password": "a long password", "role": "viewer", "site": SOUTH}
    await refused(rig, "POST", "/api/v1/users", json=body)
    mine = {"username": "x-mine", "password": "a long password", "role": "admin"}
    created = await rig.api.post("/api/v1/users", json=mine, headers=rig.scoped)
    assert created.status_code == 201 and created.json()["site"] == NORTH, created.text


async def _disable_user(rig: Rig) -> None:
    await hidden(rig, "POST", f"/api/v1/users/{await rig.user(SOUTH)}/disable")


async def _reset_password(rig: Rig) -> None:
    path = f"/api/v1/users/{await rig.user(SOUTH)}/password"
    await hidden(rig, "POST", path, json={"password": "another long one"})


async def _update_user(rig: Rig) -> None:
    await hidden(rig, "PATCH", f"/api/v1/users/{await rig.user(SOUTH)}", json={"language": "en"})
    await refused(rig, "PATCH", f"/api/v1/users/{await rig.user(NORTH)}", json={"site": SOUTH})


async def _metrics(rig: Rig) -> None:
    """The whole hub's counters: not for a site-scoped key."""
    scoped = await rig.api.get("/metrics", headers=rig.scoped)
    assert scoped.status_code == 403, scoped.text
    assert (await rig.api.get("/metrics", headers=rig.admin)).status_code == 200


async def _audit(rig: Rig) -> None:
    scoped = await rig.api.get("/api/v1/audit", headers=rig.scoped)
    assert scoped.status_code == 403, scoped.text
    assert (await rig.api.get("/api/v1/audit", headers=rig.admin)).status_code == 200


async def _stream(rig: Rig) -> None:
    await stream_carries_only_north(rig, rig.scoped)


#: (method, path) → the check of that route
CHECKS: dict[tuple[str, str], Check] = {
    ("GET", "/api/v1/agents"): _agents,
    ("GET", "/api/v1/agents/{agent_id}"): lambda rig: hidden(rig, "GET", south_agent()),
    ("GET", "/api/v1/agents/{agent_id}/config"): (
        lambda rig: hidden(rig, "GET", south_agent("/config"))
    ),
    ("PUT", "/api/v1/agents/{agent_id}/config"): (
        lambda rig: hidden(rig, "PUT", south_agent("/config"), json={"config": {"devices": []}})
    ),
    ("POST", "/api/v1/agents/{agent_id}/coap-secret"): (
        lambda rig: hidden(rig, "POST", south_agent("/coap-secret"))
    ),
    ("POST", "/api/v1/agents/{agent_id}/revoke"): (
        lambda rig: hidden(rig, "POST", south_agent("/revoke"))
    ),
    ("GET", "/api/v1/devices"): _devices,
    ("GET", "/api/v1/devices/{device_id}"): lambda rig: hidden(rig, "GET", south_device()),
    ("GET", "/api/v1/devices/{device_id}/telemetry/latest"): (
        lambda rig: hidden(rig, "GET", south_device("/telemetry/latest"))
    ),
    ("POST", "/api/v1/devices/{device_id}/commands"): _send,
    ("POST", "/api/v1/devices/{device_id}/move"): (
        lambda rig: hidden(rig, "POST", south_device("/move"), json={"agent_id": AGENT[SOUTH]})
    ),
    ("PATCH", "/api/v1/devices/{device_id}"): (
        lambda rig: hidden(rig, "PATCH", south_device(), json={"pole": "P-south-02"})
    ),
    ("GET", "/api/v1/commands/{command_id}"): _command,
    ("POST", "/api/v1/commands/{command_id}/cancel"): _cancel,
    ("GET", "/api/v1/telemetry"): _telemetry,
    ("POST", "/api/v1/command-groups"): _create_group,
    ("GET", "/api/v1/command-groups/{group_id}"): _group,
    ("POST", "/api/v1/command-groups/{group_id}/cancel"): _cancel_group,
    ("GET", "/api/v1/alarms"): _alarms,
    ("GET", "/api/v1/alarms/{alarm_id}"): _alarm,
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): _acknowledge,
    ("GET", "/api/v1/events/stream"): _stream,
    ("GET", "/api/v1/dead-letters"): _dead_letters,
    ("GET", "/api/v1/dead-letters/{dead_letter_id}"): _dead_letter,
    ("POST", "/api/v1/dead-letters/{dead_letter_id}/replay"): _replay,
    ("DELETE", "/api/v1/dead-letters/{dead_letter_id}"): _delete_dead_letter,
    ("GET", "/api/v1/lighting/strategies"): _strategies,
    ("POST", "/api/v1/lighting/strategies"): _create_strategy,
    ("GET", "/api/v1/lighting/strategies/{strategy_id}"): _strategy_route("GET"),
    ("PUT", "/api/v1/lighting/strategies/{strategy_id}"): _strategy_route(
        "PUT", json=strategy(SOUTH)
    ),
    ("DELETE", "/api/v1/lighting/strategies/{strategy_id}"): _strategy_route("DELETE"),
    ("GET", "/api/v1/lighting/strategies/{strategy_id}/preview"): _strategy_route(
        "GET", "/preview"
    ),
    ("GET", "/api/v1/lighting/strategies/{strategy_id}/firings"): _strategy_route(
        "GET", "/firings"
    ),
    ("POST", "/api/v1/lighting/strategies/{strategy_id}/apply-now"): _strategy_route(
        "POST", "/apply-now"
    ),
    ("GET", "/api/v1/webhooks"): _webhooks,
    ("POST", "/api/v1/webhooks"): _create_webhook,
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): _delete_webhook,
    ("GET", "/api/v1/api-keys"): _api_keys,
    ("POST", "/api/v1/api-keys"): _create_api_key,
    ("DELETE", "/api/v1/api-keys/{key_id}"): _revoke_api_key,
    ("GET", "/api/v1/provisioning/tokens"): _tokens,
    ("POST", "/api/v1/provisioning/tokens"): _create_token,
    ("DELETE", "/api/v1/provisioning/tokens/{token_id}"): _revoke_token,
    ("POST", "/api/v1/provisioning/bulk"): _bulk,
    ("GET", "/api/v1/audit"): _audit,
    ("GET", "/metrics"): _metrics,
    ("GET", "/api/v1/users"): _users,
    ("POST", "/api/v1/users"): _create_user,
    ("POST", "/api/v1/users/{username}/disable"): _disable_user,
    ("POST", "/api/v1/users/{username}/password"): _reset_password,
    ("PATCH", "/api/v1/users/{username}"): _update_user,
}

#: routes with no object of a site, and why
EXEMPT: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/provisioning/claim"): "no API key: the provisioning token decides the site",
    ("GET", "/healthz"): "the process's liveness",
    ("GET", "/readyz"): "the process's readiness",
    # the console (people, cookie sessions): its site scope is tests/integration/test_console.py's
    ("GET", "/login"): "the sign-in page: nobody is signed in yet",
    ("POST", "/login"): "signing in: nobody is signed in yet",
    ("POST", "/logout"): "the person's own session",
    ("GET", "/account"): "the person's own account",
    ("POST", "/account/password"): "the person's own account",
    ("POST", "/account/language"): "the person's own account",
    ("*", "/console-static"): "the console's stylesheet",
    ("GET", "/"): "console overview: scoped figures (test_console.py)",
    ("GET", "/devices"): "console devices: scoped in the query (test_console.py)",
    ("GET", "/alarms"): "console alarms: scoped like the API's list (test_console.py)",
    ("POST", "/alarms/{alarm_id}/acknowledge"): "console: alarm_in_scope, as the API's",
    ("GET", "/devices/{device_id}"): "console: device_in_scope, as the API's (test_console.py)",
    ("GET", "/devices/{device_id}/live"): "console: device_in_scope (test_console.py)",
    ("GET", "/devices/{device_id}/history.json"): "console: device_in_scope (test_console.py)",
    ("POST", "/devices/{device_id}/commands/{name}"): "console: device_in_scope (test_console.py)",
    ("POST", "/devices/{device_id}/metadata"): "console: the API's update_device (its scope)",
    ("GET", "/alarms/live"): "console: the API's EventStream, filtered by the person's site",
    ("GET", "/users"): "console: the accounts API's scope (test_console.py)",
    ("POST", "/users"): "console: confined to the person's site (test_console.py)",
    ("POST", "/users/{username}/disable"): "console: the person's site's only (test_console.py)",
    ("POST", "/users/{username}"): "console: the API's update_user route's scope",
    ("GET", "/lighting"): "console: the API's lighting routes with the person (test_console.py)",
    ("POST", "/lighting/{strategy_id}/apply-now"): "console: the API's apply-now route's scope",
    ("POST", "/lighting/strategies"): "console: the API's create route confines the selector",
    ("GET", "/agents"): "console: Registry.page_agents with the person's site (test_console.py)",
    ("GET", "/agents/{agent_id}"): "console: the API's get_agent (test_console_agents.py)",
    ("POST", "/agents/{agent_id}/config"): "console: the API's push_config route's scope",
    ("POST", "/agents/{agent_id}/revoke"): "console: the API's revoke_agent route's scope",
    ("POST", "/provisioning/bulk"): "console: the API's bulk route, the person's site",
    ("GET", "/provisioning"): "console: the provisioning service with the person's site",
    ("POST", "/provisioning/tokens"): "console: confined to the person's site (test_console.py)",
    ("POST", "/provisioning/tokens/{token_id}/revoke"): "console: the service's site check",
    ("GET", "/dead-letters"): "console: the API's dead-letter list with the person",
    ("POST", "/dead-letters/{dead_letter_id}/replay"): "console: the API's replay route's scope",
    ("GET", "/map"): "console map page: its markers come from /map/devices.json",
    ("GET", "/map/devices.json"): "console: scoped in the query (test_console.py)",
    ("GET", "/map/devices/{device_id}.json"): "console: device_in_scope (test_console.py)",
}


# -- the list of command groups; the console's lighting edits and group commands pages ------


async def _groups(rig: Rig) -> None:
    north, south = await rig.group(NORTH), await rig.group(SOUTH)
    await listed(rig, "/api/v1/command-groups?limit=200", each("group_id"), north, south)
    scoped = await rig.api.get("/api/v1/command-groups?limit=200", headers=rig.scoped)
    assert scoped.headers["X-Total-Count"] == str(len(scoped.json())), "counted in the site"


CHECKS[("GET", "/api/v1/command-groups")] = _groups
EXEMPT |= {
    ("GET", "/lighting/{strategy_id}"): "console: the API's get_strategy's scope",
    ("POST", "/lighting/{strategy_id}/edit"): "console: the API's replace route's scope",
    ("POST", "/lighting/{strategy_id}/enabled"): "console: the API's replace route's scope",
    ("POST", "/lighting/{strategy_id}/delete"): "console: the API's delete route's scope",
    ("GET", "/commands"): "console: the API's list_groups, scoped in SQL",
    ("POST", "/commands"): "console: the API's create_group confines the selector",
    ("GET", "/commands/{group_id}"): "console: the API's get_group's scope",
    ("GET", "/commands/{group_id}/progress.json"): "console: the API's get_group's scope",
    ("POST", "/commands/{group_id}/cancel"): "console: the API's group cancel route",
}
#: documentation: the schema, its pages and their assets
DOCS_PREFIXES = ("/openapi.json", "/docs", "/redoc", "/static")


def app_routes() -> set[tuple[str, str]]:
    app = create_app(HubSettings())
    found: set[tuple[str, str]] = set()
    for context in routing.iter_route_contexts(app.routes):
        path = context.path or ""
        if path.startswith(DOCS_PREFIXES):
            continue
        found |= {(method, path) for method in context.methods or {"*"} if method != "HEAD"}
    return found


def test_every_route_is_checked_or_exempt() -> None:
    routes = app_routes()
    unchecked = routes - set(CHECKS) - set(EXEMPT)
    assert not unchecked, f"routes without a site-scope check (add one to CHECKS): {unchecked}"
    stale = (set(CHECKS) | set(EXEMPT)) - routes
    assert not stale, f"checks of routes that no longer exist: {stale}"


async def test_a_site_scoped_key_sees_nothing_of_another_site_on_any_route(rig: Rig) -> None:
    failures: list[str] = []
    for (method, path), check in sorted(CHECKS.items()):
        try:
            await check(rig)
        except AssertionError as exc:
            failures.append(f"{method} {path}: {exc}")
    assert not failures, "\n".join(failures)


# -- event channels ---------------------------------------------------------------------------


def _events(site: str, n: int) -> list[HubEvent]:
    """One event of every kind about ``site``'s device or agent (and a status of the agent as
    a whole), marked ``n``."""
    device, agent = DEVICE[site], AGENT[site]
    return [
        HubEvent("telemetry", n, {"profile": "smart_pole", "values": {"tilt": 1}}, device, agent),
        HubEvent("status", n, {"scope": "device", "state": "online"}, device, agent),
        HubEvent("status", n, {"scope": "agent", "state": "online"}, None, agent),
        HubEvent(
            "command",
            n,
            {"command_id": f"c-{site}-{n}", "name": "lamp_on", "status": "sent", "detail": ""},
            device,
            agent,
        ),
        HubEvent("alarm", n, {"alarm_id": f"a-{site}-{n}", "transition": "raised"}, device, agent),
    ]


def _ours(document: dict[str, Any], n: int) -> bool:
    """One of the events :func:`_events` made (not one the alarm engine derived from them)."""
    data = document["data"]
    return document["ts_ms"] == n and str(data.get("alarm_id", "a-")).startswith("a-")


def _marks(documents: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(d["kind"], d["device_id"], d["agent_id"]) for d in documents]


def test_the_events_cover_every_event_kind() -> None:
    assert {e.kind for e in _events(NORTH, 0)} == set(get_args(EventKind))


async def stream_carries_only_north(rig: Rig, headers: dict[str, str]) -> None:
    async with rig.api.stream(
        "GET", "/api/v1/events/stream?heartbeat_s=1", headers=headers
    ) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 10) == "retry: 3000"
        n = int(utcnow().timestamp() * 1000)
        for event in _events(SOUTH, n) + _events(NORTH, n):  # south first: it would be first
            rig.hub.events.publish(event)
        received: list[dict[str, Any]] = []
        while len(received) < 5:
            line = await asyncio.wait_for(anext(lines), 10)
            if line.startswith("data: "):
                document = json.loads(line[6:])
                if _ours(document, n):
                    received.append(document)
    assert all(AGENT[NORTH] == d["agent_id"] for d in received), _marks(received)
    assert sorted(d["kind"] for d in received) == [
        "alarm",
        "command",
        "status",
        "status",
        "telemetry",
    ]


async def test_the_event_stream_of_a_site_scoped_integration_key(rig: Rig) -> None:
    key = (await create_api_key(rig.hub.registry, "north feed", "integration", NORTH))[1]
    await stream_carries_only_north(rig, {"Authorization": f"Bearer {key}"})


async def test_webhooks_of_a_site_get_only_its_events(rig: Rig) -> None:
    receivers = {name: WebhookReceiver() for name in ("north", "scoped", "all")}
    async with contextlib.AsyncExitStack() as stack:
        for receiver in receivers.values():
            await receiver.start()
            stack.push_async_callback(receiver.stop)
        hooks = {
            "north": await rig.api.post(
                "/api/v1/webhooks",
                json={"url": receivers["north"].url, "site": NORTH},
                headers=rig.admin,
            ),
            "scoped": await rig.api.post(  # a site-scoped key's webhook: of its site
                "/api/v1/webhooks", json={"url": receivers["scoped"].url}, headers=rig.scoped
            ),
            "all": await rig.api.post(
                "/api/v1/webhooks", json={"url": receivers["all"].url}, headers=rig.admin
            ),
        }
        assert all(h.status_code == 201 for h in hooks.values())
        assert [h.json()["site"] for h in hooks.values()] == [NORTH, NORTH, None]

        n = int(utcnow().timestamp() * 1000)
        for event in _events(SOUTH, n) + _events(NORTH, n):
            rig.hub.events.publish(event)

        def ours(receiver: WebhookReceiver) -> list[dict[str, Any]]:
            return [d.json() for d in receiver.deliveries if _ours(d.json(), n)]

        async def delivered() -> bool | None:
            everything = len(ours(receivers["all"])) == 10
            of_north = all(len(ours(receivers[k])) >= 5 for k in ("north", "scoped"))
            return True if everything and of_north else None

        await eventually(delivered, timeout=20)
        # the unscoped one got the south events, so the scoped ones had their chance too
        for name in ("north", "scoped"):
            got = ours(receivers[name])
            assert all(d["agent_id"] == AGENT[NORTH] for d in got), (name, _marks(got))
            assert len(got) == 5, (name, _marks(got))
