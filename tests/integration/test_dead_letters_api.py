"""Dead letters through the hub, on real servers (Mosquitto, the hub in-process, SQLite):
refused readings listed by the API with the reason, kept across a hub restart, replayed once
the cause is fixed, and the routes admin-only."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.dead_letters.store import DeadLetterSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import QOS, Channel, topic
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import free_port
from tests.helpers import RunningHub, announce_agent, eventually, make_keys, running_hub

pytestmark = pytest.mark.integration

#: a read time inside the hub's window (ingest.min_ts); tests add milliseconds to it
T0 = 1_760_000_000_000

PROBLEM_JSON = "application/problem+json"


def _settings(mosquitto: Any, tmp_path: Path, unique_id: str, **extra: Any) -> HubSettings:
    return HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        **extra,
    )


def _batch(agent_id: str, seq: int, *readings: dict[str, Any]) -> bytes:
    body = {"v": 1, "agent_id": agent_id, "seq": seq, "readings": list(readings)}
    return json.dumps(body).encode()


@contextlib.asynccontextmanager
async def _ready(settings: HubSettings, keys: dict[str, str]) -> AsyncIterator[RunningHub]:
    """The hub, once both its MQTT sessions are subscribed (what is published then is seen)."""
    async with running_hub(settings, keys) as hub:

        async def ready() -> bool | None:
            return True if (await hub.api.get("/readyz")).status_code == 200 else None

        await eventually(ready)
        yield hub


@contextlib.asynccontextmanager
async def _agent(settings: HubSettings, unique_id: str) -> AsyncIterator[Any]:
    async with make_client(settings.mqtt, f"agent-{unique_id}", persistent_session=False) as c:
        yield c


async def _birth(agent: Any, hub: RunningHub, agent_id: str, device_id: str) -> None:
    await announce_agent(agent, hub.api, agent_id, device_id, retain=False)


async def _dead_letters(api: httpx.AsyncClient, count: int, **params: Any) -> list[dict[str, Any]]:
    """The dead letters matching ``params`` once there are ``count`` of them."""

    async def listed() -> list[dict[str, Any]] | None:
        response = await api.get("/api/v1/dead-letters", params=params)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items if len(items) >= count else None

    return await eventually(listed)


def _metric(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))


async def test_a_bad_reading_is_listed_with_its_reason_and_survives_a_restart(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    settings = _settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin")
    payload = _batch(
        agent_id,
        7,
        {"device_id": device_id, "ts": T0 + 1_000, "values": {"power": 60.5, "dimming": 40}},
        {"device_id": device_id, "ts": "noon", "values": {"power": 1.0}},  # malformed
        {"device_id": device_id, "ts": T0 + 3_000, "values": {"power": 61.5}},
    )
    async with _ready(settings, keys) as hub, _agent(settings, unique_id) as agent:
        await _birth(agent, hub, agent_id, device_id)
        await agent.publish(topic(agent_id, Channel.TELEMETRY), payload, qos=QOS)

        async def stored() -> dict[str, Any] | None:
            response = await hub.api.get(f"/api/v1/devices/{device_id}/telemetry/latest")
            points: dict[str, Any] = response.json().get("points", {})
            return points if points.get("power", {}).get("value") == 61.5 else None

        points = await eventually(stored)
        assert points["dimming"]["value"] == 40  # both valid readings are stored
        [dead] = await _dead_letters(hub.api, 1, agent_id=agent_id)
        assert dead["source"] == dead["topic"] == topic(agent_id, Channel.TELEMETRY)
        assert dead["reason"].startswith("seq 7 reading 1: ")
        assert dead["payload"] == payload.decode()
        assert base64.b64decode(dead["payload_base64"]) == payload
        assert dead["payload_size"] == len(payload) and dead["truncated"] is False
        assert dead["received_at"].endswith(("Z", "+00:00"))
        metrics = (await hub.api.get("/metrics")).text
        assert _metric(metrics, "hub_dead_letters_total") >= 1
        assert _metric(metrics, "hub_dead_letters_unsaved_total") == 0

    async with _ready(settings, keys) as hub:  # a new hub on the same registry
        response = await hub.api.get("/api/v1/dead-letters", params={"agent_id": agent_id})
        assert [d["id"] for d in response.json()["items"]] == [dead["id"]]
        again = await hub.api.get(f"/api/v1/dead-letters/{dead['id']}")
        assert again.status_code == 200 and again.json() == dead


async def test_dead_letters_still_queued_are_written_when_the_hub_stops(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id = f"agent-{unique_id}"
    # written only every minute: what the first hub refused is written by its close()
    settings = _settings(
        mosquitto, tmp_path, unique_id, dead_letters=DeadLetterSettings(flush_interval_s=60)
    )
    keys = await make_keys(settings.registry_url, "admin")
    async with _ready(settings, keys) as hub, _agent(settings, unique_id) as agent:
        await agent.publish(topic(agent_id, Channel.TELEMETRY), b"not json", qos=QOS)

        async def queued() -> bool | None:
            metrics = (await hub.api.get("/metrics")).text
            return True if _metric(metrics, "hub_dead_letters_queued") == 1 else None

        await eventually(queued)
        listed = await hub.api.get("/api/v1/dead-letters", params={"agent_id": agent_id})
        assert listed.json()["items"] == []
    async with _ready(settings, keys) as hub:
        [dead] = (await hub.api.get("/api/v1/dead-letters", params={"agent_id": agent_id})).json()[
            "items"
        ]
        assert dead["payload"] == "not json"


async def test_a_message_of_an_unknown_device_is_replayed_once_the_device_is_registered(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    settings = _settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin", "operator", "viewer")
    payload = _batch(
        agent_id,
        1,
        {"device_id": device_id, "ts": T0 + 1_000, "values": {"power": 42.0}},
        {"device_id": device_id, "ts": T0 + 2_000, "values": {"power": 43.5, "lamp_on": True}},
    )
    huge = _batch(  # over 4,096 bytes: kept truncated, not replayable
        agent_id, 2, {"device_id": "ghost", "ts": T0 + 1, "values": {"note": "x" * 5000}}
    )
    async with _ready(settings, keys) as hub, _agent(settings, unique_id) as agent:
        api = hub.api
        await agent.publish(topic(agent_id, Channel.TELEMETRY), payload, qos=QOS)
        await agent.publish(topic(agent_id, Channel.TELEMETRY), huge, qos=QOS)
        dead = await _dead_letters(api, 3, agent_id=agent_id)
        big, *unknown = dead  # newest first
        assert big["truncated"] is True and big["payload_size"] == len(huge)
        assert len(base64.b64decode(big["payload_base64"])) == 4096
        assert {d["reason"] for d in unknown} == {
            f"seq 1 reading {i}: device '{device_id}' is not registered to agent '{agent_id}'"
            for i in (0, 1)
        }
        first = unknown[-1]

        # not yet registered: refused again and kept, with the reasons; nothing piles up
        counted = _metric((await api.get("/metrics")).text, "hub_dead_letters_total")
        for _ in range(2):
            response = await api.post(f"/api/v1/dead-letters/{first['id']}/replay")
            assert response.status_code == 200, response.text
            assert response.json() == {
                "outcome": "refused",
                "readings_stored": 0,
                "reasons": [d["reason"] for d in reversed(unknown)],
                "deleted": False,
                "siblings_deleted": 0,
            }
        assert _metric((await api.get("/metrics")).text, "hub_dead_letters_total") == counted
        kept = await _dead_letters(api, 3, agent_id=agent_id)
        assert len(kept) == 3  # no new dead letters
        assert [d["reason"] for d in kept if d["id"] == first["id"]] == [
            "; ".join(d["reason"] for d in reversed(unknown))
        ]

        await _birth(agent, hub, agent_id, device_id)
        response = await api.post(f"/api/v1/dead-letters/{first['id']}/replay")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "outcome": "accepted",
            "readings_stored": 2,
            "reasons": [],
            "deleted": True,
            "siblings_deleted": 1,  # the other reading's dead letter: the same message
        }
        latest = (await api.get(f"/api/v1/devices/{device_id}/telemetry/latest")).json()
        assert latest["points"]["power"]["value"] == 43.5
        assert latest["points"]["lamp_on"]["value"] is True
        gone = await api.get(f"/api/v1/dead-letters/{first['id']}")
        assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM_JSON
        again = await api.post(f"/api/v1/dead-letters/{first['id']}/replay")
        assert again.status_code == 404

        refused = await api.post(f"/api/v1/dead-letters/{big['id']}/replay")
        assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM_JSON
        assert f"only 4096 of its {len(huge)} payload bytes were kept" in refused.json()["detail"]

        replays = (await api.get("/api/v1/audit", params={"action": "dead_letter.replay"})).json()
        outcomes = [(e["target"], e["detail"]["outcome"]) for e in replays["items"]]
        target = f"dead_letter:{first['id']}"
        assert outcomes == [(target, "accepted"), (target, "refused"), (target, "refused")]

        # admin only: other roles are refused, no key is unauthorised
        paths = [
            ("GET", "/api/v1/dead-letters"),
            ("GET", f"/api/v1/dead-letters/{big['id']}"),
            ("POST", f"/api/v1/dead-letters/{big['id']}/replay"),
            ("DELETE", f"/api/v1/dead-letters/{big['id']}"),
        ]
        for method, path in paths:
            for role in ("viewer", "operator"):
                headers = {"Authorization": f"Bearer {keys[role]}"}
                response = await api.request(method, path, headers=headers)
                assert response.status_code == 403, (role, method, path, response.text)
                assert response.headers["content-type"] == PROBLEM_JSON
            response = await api.request(method, path, headers={"Authorization": ""})
            assert response.status_code == 401, (method, path)

        deleted = await api.delete(f"/api/v1/dead-letters/{big['id']}")
        assert deleted.status_code == 204
        assert (await api.delete(f"/api/v1/dead-letters/{big['id']}")).status_code == 404
        deletions = (await api.get("/api/v1/audit", params={"action": "dead_letter.delete"})).json()
        assert [e["target"] for e in deletions["items"]] == [f"dead_letter:{big['id']}"]


async def test_the_list_is_paged_with_a_cursor_and_filtered(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id = f"agent-{unique_id}"
    settings = _settings(mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin")
    async with _ready(settings, keys) as hub, _agent(settings, unique_id) as agent:
        api = hub.api
        for i in range(5):
            await agent.publish(topic(agent_id, Channel.TELEMETRY), f"junk {i}".encode(), qos=QOS)
        everything = await _dead_letters(api, 5, agent_id=agent_id)
        assert [d["payload"] for d in everything] == [f"junk {i}" for i in range(4, -1, -1)]
        seen, cursor = [], None
        while True:
            params: dict[str, Any] = {"agent_id": agent_id, "limit": 2}
            if cursor is not None:
                params["cursor"] = cursor
            page = (await api.get("/api/v1/dead-letters", params=params)).json()
            seen += page["items"]
            if (cursor := page["next_cursor"]) is None:
                break
        assert seen == everything
        middle = everything[2]["received_at"]
        newer = (
            await api.get("/api/v1/dead-letters", params={"agent_id": agent_id, "since": middle})
        ).json()["items"]
        assert newer == everything[:3]
        older = (
            await api.get("/api/v1/dead-letters", params={"agent_id": agent_id, "until": middle})
        ).json()["items"]
        assert older == everything[3:]
        for params in (
            {"cursor": "not-a-cursor"},
            {"limit": 0},
            {"agent_id": "no spaces"},
            {"since": "yesterday"},
            {"since": "2026-11-01T12:00:00"},  # RFC 3339 wants the offset
            {"until": "0"},
        ):
            response = await api.get("/api/v1/dead-letters", params=params)
            assert response.status_code == 422, (params, response.text)
            assert response.headers["content-type"] == PROBLEM_JSON
        # a time before UTC's first (year 1 at +01:00) is valid RFC 3339: before everything
        response = await api.get(
            "/api/v1/dead-letters", params={"until": "0001-01-01T00:00:00+01:00"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []
