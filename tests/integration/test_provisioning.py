"""Provisioning on real servers: Mosquitto 2 with the dynamic-security plugin, the hub's HTTP
API (uvicorn, in process) and the agent's claim.

token → claim → the agent's own credentials work in its namespace and nowhere else (SUBACK
and PUBACK reason codes 0x87, and an admin subscriber on ``#`` that sees nothing leak) →
revocation disconnects the agent and refuses its reconnection → spent, expired, revoked and
guessed tokens are refused with their reasons, and a guesser gets 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import uvicorn
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr
from sqlalchemy import update

from cloud_hub.api.app import create_app
from cloud_hub.api.auth import new_api_key
from cloud_hub.api.routes_provisioning import router as provisioning_router
from cloud_hub.hub import Hub
from cloud_hub.provisioning import (
    DynsecAdminSettings,
    ProvisioningService,
    ProvisioningSettings,
    ProvisioningTokenRow,
)
from cloud_hub.registry import utcnow
from cloud_hub.registry.models import ApiKeyRow
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import agent_client_id
from edge_agent.provision import claim, write_credentials
from edge_agent.settings import AgentSettings
from iot_runtime import load_settings
from iot_runtime.mqtt import make_client
from tests.harness import free_port
from tests.harness.dynsec import Broker

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
TIMEOUT = 10.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Stack:
    hub: Hub
    url: str
    admin_key: str
    tech_key: str


@contextlib.asynccontextmanager
async def running_hub(broker: Broker, tmp_path: Path, unique_id: str) -> AsyncIterator[Stack]:
    settings = HubSettings(
        mqtt=broker.hub,
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    hub = Hub(settings)
    assert broker.admin.password is not None
    hub.provisioning = ProvisioningService.from_settings(  # type: ignore[attr-defined]
        hub.registry,
        ProvisioningSettings(
            broker_admin=DynsecAdminSettings(username="admin", password=broker.admin.password),
            failed_claims_per_minute=1,
            failed_claims_burst=6,
        ),
        settings.mqtt,
    )
    app = create_app(settings, hub)
    if not any(getattr(r, "path", "") == "/api/v1/provisioning/claim" for r in app.routes):
        app.include_router(provisioning_router)
    server = _Server(
        uvicorn.Config(
            app,
            host=settings.api.host,
            port=settings.api.port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                assert not task.done(), "the hub's HTTP server stopped during start-up"
                await asyncio.sleep(0.02)
        keys = []
        for role, site in (("admin", None), ("technician", "north")):
            key_id, secret, key_hash = new_api_key()
            await hub.registry.add_api_key(
                ApiKeyRow(
                    key_id=key_id,
                    key_hash=key_hash,
                    name=role,
                    role=role,
                    site=site,
                    created_at=utcnow(),
                )
            )
            keys.append(secret)
        yield Stack(hub, f"http://{settings.api.host}:{settings.api.port}", *keys)
    finally:
        server.should_exit = True
        await asyncio.wait({task}, timeout=TIMEOUT)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _code(value: ReasonCode | int) -> int:
    return value.value if isinstance(value, ReasonCode) else value


class Pubacks:
    """PUBACK reason codes of an aiomqtt client (aiomqtt does not surface them)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.codes: list[int] = []
        paho = client._client
        original = paho.on_publish

        def record(c: Any, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
            self.codes.append(_code(rc))
            original(c, userdata, mid, rc, props)

        paho.on_publish = record

    async def publish(self, client: aiomqtt.Client, topic: str) -> int:
        before = len(self.codes)
        await client.publish(topic, b"probe", qos=1)
        assert len(self.codes) == before + 1
        return self.codes[-1]


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        return await anext(aiter(client.messages))


async def test_claim_acl_revocation_and_refusals(
    dynsec_broker: Broker, tmp_path: Path, unique_id: str
) -> None:
    agent_a, agent_b = f"cab-a-{unique_id}", f"cab-b-{unique_id}"
    async with (
        running_hub(dynsec_broker, tmp_path, unique_id) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=TIMEOUT) as api,
    ):
        admin, tech = _auth(stack.admin_key), _auth(stack.tech_key)

        # -- tokens: a technician's are scoped to their site; the secret is shown once --------
        assert (await api.post("/api/v1/provisioning/tokens", json={})).status_code == 401
        response = await api.post(
            "/api/v1/provisioning/tokens", json={"site": "south"}, headers=tech
        )
        assert response.status_code == 403, response.text
        response = await api.post(
            "/api/v1/provisioning/tokens", json={"max_uses": 2, "ttl_s": 600}, headers=tech
        )
        assert response.status_code == 201, response.text
        issued = response.json()
        token = issued["token"]
        assert issued["site"] == "north" and len(token) >= 30
        listed = (await api.get("/api/v1/provisioning/tokens", headers=tech)).json()
        assert [t["token_id"] for t in listed] == [issued["token_id"]]
        assert token not in str(listed) and "hash" not in str(listed)

        # -- claims: agent A through the agent's own code, agent B with the token in the body --
        devices_a = [{"device_id": f"pole-a-{unique_id}", "profile": "smart_pole"}]
        creds_a = await claim(stack.url, token, agent_a, devices_a)
        assert creds_a.site == "north" and creds_a.client_id == agent_client_id(agent_a)
        assert (creds_a.host, creds_a.port) == (
            dynsec_broker.server.host,
            dynsec_broker.server.port,
        )
        config = tmp_path / "agent-a.yaml"
        config.write_text(f"agent_id: {agent_a}\ndata_dir: {tmp_path / 'agent-a'}\n")
        write_credentials(config, creds_a)
        mqtt_a = load_settings(AgentSettings, config).mqtt
        response = await api.post(
            "/api/v1/provisioning/claim", json={"token": token, "agent_id": agent_b}
        )
        assert response.status_code == 201, response.text
        mqtt_b = mqtt_a.model_copy(
            update={
                "username": response.json()["mqtt"]["username"],
                "password": SecretStr(response.json()["mqtt"]["password"]),
            }
        )
        device = (await api.get(f"/api/v1/devices/pole-a-{unique_id}", headers=admin)).json()
        assert device["agent_id"] == agent_a

        # -- A works in its own namespace, and nowhere else --------------------------------
        observer = make_client(
            dynsec_broker.admin, f"observer-{unique_id}", persistent_session=False
        )
        client_a = make_client(mqtt_a, agent_client_id(agent_a), persistent_session=False)
        async with observer, client_a:
            assert [_code(c) for c in await observer.subscribe("#", qos=1)] == [1]
            own = f"iot/v1/{agent_a}/#"
            assert [_code(c) for c in await client_a.subscribe(own, qos=1)] == [1]
            for forbidden in (
                f"iot/v1/{agent_b}/#",
                "iot/v1/+/commands",
                "#",
                "$SYS/#",
                "$CONTROL/#",
                "$CONTROL/dynamic-security/v1/response",
            ):
                granted = await client_a.subscribe(forbidden, qos=1)
                assert [_code(c) for c in granted] == [NOT_AUTHORIZED], forbidden
            pubacks = Pubacks(client_a)
            assert await pubacks.publish(client_a, f"iot/v1/{agent_a}/config/reported") == 0
            for forbidden in (
                f"iot/v1/{agent_b}/commands",
                f"iot/v1/{agent_b}/state",
                "elsewhere/topic",
                "$CONTROL/dynamic-security/v1",
            ):
                assert await pubacks.publish(client_a, forbidden) == NOT_AUTHORIZED, forbidden
            sentinel = f"iot/v1/{agent_a}/probe/done"  # topics the hub does not consume
            assert await pubacks.publish(client_a, sentinel) == 0
            # the observer sees A's two allowed messages, in order, and nothing between them
            seen = [str((await _next_message(observer)).topic) for _ in range(2)]
            assert seen == [f"iot/v1/{agent_a}/config/reported", sentinel]
            # A got its own message back, and nothing else
            assert str((await _next_message(client_a)).topic) == f"iot/v1/{agent_a}/config/reported"
            assert str((await _next_message(client_a)).topic) == sentinel

        # the hub's own user (hub_acls) reads every namespace, also as a shared subscription
        async with make_client(
            dynsec_broker.hub, f"hub-probe-{unique_id}", persistent_session=False
        ) as hub_user:
            for allowed in ("iot/v1/+/telemetry", "$share/hubs/iot/v1/+/telemetry"):
                assert [_code(c) for c in await hub_user.subscribe(allowed, qos=1)] == [1]
            for forbidden in ("#", "$SYS/#", "$CONTROL/#"):
                granted = await hub_user.subscribe(forbidden, qos=1)
                assert [_code(c) for c in granted] == [NOT_AUTHORIZED], forbidden

        # the credentials work only with the agent's own client id
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with make_client(mqtt_a, "someone-else", persistent_session=False):
                pass
        assert _code(refused.value.rc) == NOT_AUTHORIZED

        # -- revocation disconnects A and refuses its reconnection; B is unaffected -----------
        client_a = make_client(mqtt_a, agent_client_id(agent_a), persistent_session=False)
        async with client_a:
            await client_a.subscribe(f"iot/v1/{agent_a}/commands", qos=1)
            response = await api.post(f"/api/v1/agents/{agent_a}/revoke", headers=tech)
            assert response.status_code == 403
            response = await api.post(f"/api/v1/agents/{agent_a}/revoke", headers=admin)
            assert response.status_code == 200, response.text
            with pytest.raises(aiomqtt.MqttError):
                await _next_message(client_a)  # the broker closed the connection
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with make_client(mqtt_a, agent_client_id(agent_a), persistent_session=False):
                pass
        assert _code(refused.value.rc) in (0x86, NOT_AUTHORIZED)  # bad credentials / not authorised
        async with make_client(mqtt_b, agent_client_id(agent_b), persistent_session=False) as b:
            assert [_code(c) for c in await b.subscribe(f"iot/v1/{agent_b}/#", qos=1)] == [1]
        response = await api.post(f"/api/v1/agents/{agent_a}/revoke", headers=admin)
        assert response.status_code == 200  # idempotent

        # -- refusals, each with its reason; guessing ends in 429 ----------------------------
        async def refused_claim(secret: str | None, agent: str = "cab-x") -> httpx.Response:
            body = {"agent_id": agent} | ({"token": secret} if secret is not None else {})
            return await api.post("/api/v1/provisioning/claim", json=body)

        expired = (await api.post("/api/v1/provisioning/tokens", json={}, headers=admin)).json()
        async with stack.hub.registry.session.begin() as db:
            await db.execute(
                update(ProvisioningTokenRow)
                .where(ProvisioningTokenRow.token_id == expired["token_id"])
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        revoked = (await api.post("/api/v1/provisioning/tokens", json={}, headers=admin)).json()
        response = await api.delete(
            f"/api/v1/provisioning/tokens/{revoked['token_id']}", headers=tech
        )
        assert response.status_code == 404  # not a token of the technician's site: not found
        response = await api.delete(
            f"/api/v1/provisioning/tokens/{revoked['token_id']}", headers=admin
        )
        assert response.status_code == 200 and response.json()["revoked_at"]
        good = (await api.post("/api/v1/provisioning/tokens", json={}, headers=admin)).json()

        for secret, status, reason in [
            (token, 410, "exhausted"),
            (expired["token"], 410, "expired"),
            (revoked["token"], 410, "revoked"),
            ("cpt_" + secrets.token_urlsafe(24), 401, "unknown"),
            (None, 401, "missing"),
            ("cpt_guess", 401, "unknown"),
        ]:
            response = await refused_claim(secret)
            assert response.status_code == status, (reason, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["reason"] == reason
        response = await refused_claim(good["token"])  # even a good token: the address is blocked
        assert response.status_code == 429, response.text
        assert response.json()["reason"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1

        # -- bulk CSV: one agent-bound token per agent -----------------------------------------
        csv_text = f"agent_id,device_id,profile\ncab-c-{unique_id},pole-c-{unique_id},smart_pole\n"
        response = await api.post(
            "/api/v1/provisioning/bulk",
            content=csv_text,
            headers=tech | {"Content-Type": "text/csv"},
        )
        assert response.status_code == 201, response.text
        [bulk] = response.json()
        assert bulk["agent_id"] == f"cab-c-{unique_id}" and bulk["site"] == "north"
        response = await api.post(
            "/api/v1/provisioning/bulk",
            content="agent_id,device_id,profile\ncab-d,pole-d,nope\n",
            headers=tech | {"Content-Type": "text/csv"},
        )
        assert response.status_code == 422 and "line 2, profile" in response.json()["detail"]

        # -- audit: every mutation, admins only ----------------------------------------------
        assert (await api.get("/api/v1/audit", headers=tech)).status_code == 403
        page = (await api.get("/api/v1/audit", params={"limit": 100}, headers=admin)).json()
        actions = [(e["action"], e["target"]) for e in page["items"]]
        assert ("agent.claim", f"agent:{agent_a}") in actions
        assert ("agent.claim", f"agent:{agent_b}") in actions
        assert ("agent.revoke", f"agent:{agent_a}") in actions
        assert ("token.revoke", f"token:{revoked['token_id']}") in actions
        assert actions.count(("agent.revoke", f"agent:{agent_a}")) == 1
        assert token not in str(page)
