"""The claim-guessing limit keys on the real client: X-Forwarded-For counts only from a
configured proxy, and a guesser behind the same address as a technician (a NAT) does not lock
the technician's own agent out. The hub is served by ``cloud_hub.server.serve`` (uvicorn as in
production), claims come from 127.0.0.1."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.provisioning import ProvisioningSettings
from cloud_hub.settings import ApiSettings
from tests.harness import free_port
from tests.helpers import hub_settings, running_hub

pytestmark = pytest.mark.integration

BURST = 3


def _settings(broker: Any, tmp_path: Path, unique_id: str, proxies: list[str]) -> Any:
    return hub_settings(
        broker,
        tmp_path,
        unique_id,
        api=ApiSettings(port=free_port(), trusted_proxies=proxies),
        provisioning=ProvisioningSettings(failed_claims_burst=BURST, failed_claims_per_minute=0.01),
    )


async def _guess(api: httpx.AsyncClient, agent: str, forwarded: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    body = {"agent_id": agent, "token": "cpt_" + secrets.token_urlsafe(24)}
    response = await api.post("/api/v1/provisioning/claim", json=body, headers=headers)
    return response.status_code


async def test_rotating_x_forwarded_for_does_not_lift_the_limit(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    async with running_hub(_settings(mosquitto, tmp_path, unique_id, [])) as hub:
        statuses = [await _guess(hub.api, "cab-x", f"203.0.113.{i}") for i in range(BURST + 3)]
        assert statuses == [401] * BURST + [429] * 3


async def test_a_configured_proxy_s_forwarded_address_is_the_client(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    async with running_hub(_settings(mosquitto, tmp_path, unique_id, ["127.0.0.0/8"])) as hub:
        statuses = [await _guess(hub.api, "cab-x", "203.0.113.7") for _ in range(BURST + 1)]
        assert statuses == [401] * BURST + [429]
        # another client behind the proxy has its own budget
        assert await _guess(hub.api, "cab-x", "198.51.100.9") == 401
        # the last address of the chain is the one the trusted proxy saw
        assert await _guess(hub.api, "cab-x", "198.51.100.9, 203.0.113.7") == 429


async def test_a_guesser_behind_the_same_nat_does_not_lock_a_technician_out(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    async with running_hub(_settings(mosquitto, tmp_path, unique_id, [])) as hub:
        for _ in range(BURST):
            assert await _guess(hub.api, "cab-guessed") == 401
        assert await _guess(hub.api, "cab-guessed") == 429
        # the technician, from the same address, claims their own cabinet with a good token
        issued = await hub.api.post("/api/v1/provisioning/tokens", json={"site": "north"})
        assert issued.status_code == 201, issued.text
        body = {"agent_id": f"cab-{unique_id}", "token": issued.json()["token"]}
        claimed = await hub.api.post("/api/v1/provisioning/claim", json=body)
        assert claimed.status_code == 201, claimed.text
        # a guesser rotating agent ids is held to the address's budget in all
        statuses = [await _guess(hub.api, f"cab-{i}") for i in range(BURST * 10)]
        assert statuses.count(401) == BURST * 10 - BURST and statuses[-1] == 429
