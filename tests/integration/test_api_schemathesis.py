"""The hub's HTTP API against its own OpenAPI schema (Schemathesis), auth on every route,
the body-size limit and pagination.

The hub runs in-process (uvicorn in this event loop) with a real Mosquitto, a SQLite telemetry
store and a SQLite registry, seeded with one online agent and its smart pole. Schemathesis'
CLI runs against it as a subprocess (every check; positive and negative data; examples,
coverage and fuzzing phases), with ``schemathesis_hooks`` for what the schema cannot say.

Fuzz deeper locally: ``API_FUZZ_EXAMPLES=500 pytest tests/integration/test_api_schemathesis.py``
(random: no fixed seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud_hub.api.limits import MAX_BODY_BYTES
from cloud_hub.api.routes_provisioning import MAX_CSV_BYTES
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import QOS, AgentState, Channel, DeviceInfo, encode, topic
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness import free_port
from tests.helpers import RunningHub, eventually, make_keys, running_hub

pytestmark = pytest.mark.integration

#: Examples per operation and generation mode (positive, negative) in the fuzzing phase.
MAX_EXAMPLES = int(os.environ.get("API_FUZZ_EXAMPLES", "8"))
#: Not fuzzed: an endless server-sent event stream (its own tests cover it).
NOT_FUZZED = "/api/v1/events/stream"
#: Schemathesis' data checks, replaced by ours (``schemathesis_hooks``: the exceptions).
REPLACED_CHECKS = "negative_data_rejection,positive_data_acceptance"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
ROOT = Path(__file__).resolve().parents[2]
#: Open to everyone, or authenticated otherwise (the claim: by its provisioning token).
PUBLIC = {
    "GET /healthz",
    "GET /readyz",
    "GET /docs",
    "GET /openapi.json",
    "GET /redoc",
    "POST /api/v1/provisioning/claim",
}
#: GETs a viewer may not make: they need more than ``read``.
VIEWER_FORBIDDEN_GETS = {
    "GET /api/v1/api-keys",
    "GET /api/v1/audit",
    "GET /api/v1/dead-letters",
    "GET /api/v1/dead-letters/{dead_letter_id}",
    "GET /api/v1/provisioning/tokens",
    "GET /api/v1/events/stream",
    "GET /api/v1/webhooks",
    "GET /api/v1/users",
}
PROBLEM_JSON = "application/problem+json"


@dataclass
class Seeded:
    hub: RunningHub
    base_url: str
    agent_id: str
    device_id: str
    #: a refused message (so the dead-letter routes answer with real items too)
    dead_letter_id: int
    #: a lighting strategy dimming the three poles
    strategy_id: str


@contextlib.asynccontextmanager
async def seeded_hub(mosquitto: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Seeded]:
    """The hub, with one online agent (birth message over MQTT) behind which are 3 poles."""
    # a broker of its own (the caller's mosquitto_private): the session broker holds other
    # tests' retained agent states, which would show up in the lists checked here
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    port = free_port()
    settings = HubSettings(
        mqtt=mqtt,
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=port),
    )
    agent_id, device_id = f"agent-{unique_id}", f"pole-{unique_id}"
    birth = AgentState(
        agent_id=agent_id,
        state="online",
        software_version="1.0.0",
        devices=[
            DeviceInfo(device_id=f"{device_id}{suffix}", profile="smart_pole")
            for suffix in ("", "-b", "-c")
        ],
    )
    keys = await make_keys(settings.registry_url, "admin", "viewer")
    async with running_hub(settings, keys) as hub:
        async with make_client(mqtt, f"seed-{unique_id}", persistent_session=False) as client:
            # not retained (no other test is to see this agent): sent again until the hub,
            # which may still be subscribing, has it
            async def registered() -> bool | None:
                await client.publish(topic(agent_id, Channel.STATE), encode(birth), qos=QOS)
                response = await hub.api.get(f"/api/v1/devices/{device_id}")
                return True if response.status_code == 200 else None

            await eventually(registered)
            await client.publish(topic(agent_id, Channel.TELEMETRY), b"not json", qos=QOS)

            async def dead_lettered() -> int | None:
                items = (await hub.api.get("/api/v1/dead-letters")).json()["items"]
                return int(items[0]["id"]) if items else None

            dead_letter_id = await eventually(dead_lettered)
        strategy = await hub.api.post(
            "/api/v1/lighting/strategies",
            json={
                "name": "seeded",
                "selector": {"device_ids": [device_id, f"{device_id}-b", f"{device_id}-c"]},
                "steps": [
                    {"at": "18:00", "command": "lamp_on"},
                    {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
                ],
            },
        )
        assert strategy.status_code == 201, strategy.text
        strategy_id = strategy.json()["strategy_id"]
        try:
            yield Seeded(
                hub, f"http://127.0.0.1:{port}", agent_id, device_id, dead_letter_id, strategy_id
            )
        finally:
            # a pushed configuration is retained: leave nothing on the shared broker
            async with make_client(mqtt, f"unseed-{unique_id}", persistent_session=False) as c:
                await c.publish(topic(agent_id, Channel.CONFIG_DESIRED), b"", qos=QOS, retain=True)


def _config(seeded: Seeded) -> str:
    """Real ids half the time (200s), made-up ones otherwise (404s)."""
    ids = {
        "device_id": seeded.device_id,
        "agent_id": seeded.agent_id,
        "dead_letter_id": seeded.dead_letter_id,
        "strategy_id": seeded.strategy_id,
    }
    # 410: a provisioning token revoked, expired or used up (the form is fine, the token gone)
    statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "429", "5xx"]
    lines = ["[checks.positive_data_acceptance]", f"expected-statuses = {json.dumps(statuses)}"]
    # no positive coverage of a lighting strategy's time zone: one request per zone (599)
    lines += [
        "[[operations]]",
        'include-path-regex = "^/api/v1/lighting/strategies"',
        'phases.coverage.generation.mode = "negative"',
    ]
    lines += ["[parameters]"]
    lines += [f'"path.{k}" = {{ dictionary = "{k}", probability = 0.5 }}' for k in ids]
    for name, value in ids.items():
        lines += [f"[dictionaries.{name}]", f"values = [{json.dumps(value)}]"]
    return "\n".join(lines) + "\n"


async def test_every_operation_conforms_to_its_schema(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    """Schemathesis' CLI with every check, positive and negative data, in its examples,
    coverage (boundaries, missing parameters, undocumented methods) and fuzzing phases."""
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        config = tmp_path / "schemathesis.toml"
        config.write_text(_config(seeded))
        ran = tmp_path / "checks-ran"
        seed = [] if "API_FUZZ_EXAMPLES" in os.environ else ["--seed", "0"]
        process = await asyncio.create_subprocess_exec(
            *(str(SCHEMATHESIS), "--config-file", str(config), "--no-color", "run"),
            f"{seeded.base_url}/openapi.json",
            *("--checks", "all", "--exclude-checks", REPLACED_CHECKS, "--mode", "all"),
            *("--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES)),
            *("--exclude-path", NOT_FUZZED, "--generation-with-security-parameters", "false"),
            *("-H", f"Authorization: Bearer {seeded.hub.keys['admin']}", *seed),
            *("--output-truncate", "false", "--request-timeout", "10"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its .schemathesis/ cache
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
                "HUB_CHECKS_RAN": str(ran),
            },
        )
        output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    checks_ran = set(ran.read_text().split())
    assert checks_ran == {"hub_negative_data_rejection", "hub_positive_data_acceptance"}, report


# -- auth on every route ------------------------------------------------------------------


def _routes(openapi: dict[str, Any], seeded: Seeded) -> list[tuple[str, str, str]]:
    """(label, method, url) of every operation, path ids filled in with the seeded ones."""
    fill = {
        "device_id": seeded.device_id,
        "agent_id": seeded.agent_id,
        "strategy_id": seeded.strategy_id,
    }
    routes = []
    for path, item in openapi["paths"].items():
        url = path
        for name, value in fill.items():
            url = url.replace(f"{{{name}}}", value)
        url = url.replace("{", "").replace("}", "")  # other ids: their own name
        for method in item:
            routes.append((f"{method.upper()} {path}", method.upper(), url))
    return routes


async def test_every_route_but_the_public_ones_needs_a_key_and_viewers_only_read(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    async with (
        seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded,
        httpx.AsyncClient(base_url=seeded.base_url, timeout=10) as anonymous,
    ):
        openapi = (await seeded.hub.api.get("/openapi.json")).json()
        routes = _routes(openapi, seeded)
        labels = {label for label, _, _ in routes}
        assert labels >= VIEWER_FORBIDDEN_GETS and len(routes) > 20
        viewer = {"Authorization": f"Bearer {seeded.hub.keys['viewer']}"}
        for label, method, url in routes:
            if label in PUBLIC:
                continue
            for headers in ({}, {"X-API-Key": "cp_unknown"}, {"Authorization": "Bearer nope"}):
                response = await anonymous.request(method, url, headers=headers)
                assert response.status_code == 401, (label, headers, response.text)
                assert response.headers["content-type"] == PROBLEM_JSON, label
                assert response.headers["www-authenticate"] == "Bearer", label
                assert response.json()["status"] == 401
            if method != "GET" or label in VIEWER_FORBIDDEN_GETS:
                response = await anonymous.request(method, url, headers=viewer)
                assert response.status_code == 403, (label, response.text)
                assert response.headers["content-type"] == PROBLEM_JSON, label
            else:  # allowed: found, not found, or missing query parameters
                response = await anonymous.request(method, url, headers=viewer)
                assert response.status_code in (200, 404, 422), (label, response.text)


# -- body size ----------------------------------------------------------------------------


async def test_bodies_over_the_limit_are_refused_with_413(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        api = seeded.hub.api
        url = f"/api/v1/devices/{seeded.device_id}/commands"
        padding = "x" * MAX_BODY_BYTES
        big = f'{{"name": "set_dimming", "params": {{"level": 40, "pad": "{padding}"}}}}'
        # declared with Content-Length: refused before the body is read
        response = await api.post(url, content=big, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["title"] == "Content Too Large"

        # streamed without a length (chunked): refused once the count passes the limit
        async def chunks() -> AsyncIterator[bytes]:
            data = big.encode()
            for start in range(0, len(data), 64 * 1024):
                yield data[start : start + 64 * 1024]

        async with httpx.AsyncClient(base_url=seeded.base_url, timeout=10) as fresh:
            response = await fresh.post(
                url,
                content=chunks(),
                headers={**api.headers, "Content-Type": "application/json"},
            )
        assert response.status_code == 413
        assert response.headers["content-type"] == PROBLEM_JSON

        # just under the limit is read (and refused for what it says, not its size)
        small = big[: MAX_BODY_BYTES - 100] + '"}}'
        response = await api.post(url, content=small, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        # the bulk CSV upload has its own, larger limit
        csv = "agent_id,device_id,profile\n" + "a,b,c\n" * (MAX_BODY_BYTES // 6 + 1000)
        response = await api.post(
            "/api/v1/provisioning/bulk", content=csv, headers={"Content-Type": "text/csv"}
        )
        assert response.status_code == 422, response.text
        # ... and is refused past it, also when streamed (read by the route itself)
        async with httpx.AsyncClient(base_url=seeded.base_url, timeout=10) as fresh:
            too_big = csv.encode() + b"a,b,c\n" * (MAX_CSV_BYTES // 6)

            async def csv_chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(too_big), 256 * 1024):
                    yield too_big[start : start + 256 * 1024]

            response = await fresh.post(
                "/api/v1/provisioning/bulk",
                content=csv_chunks(),
                headers={**api.headers, "Content-Type": "text/csv"},
            )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == PROBLEM_JSON


# -- pagination ---------------------------------------------------------------------------


async def test_device_and_agent_lists_are_paginated_by_id(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        api = seeded.hub.api
        everything = [d["device_id"] for d in (await api.get("/api/v1/devices")).json()]
        assert everything == sorted(everything) and len(everything) == 3
        first = (await api.get("/api/v1/devices", params={"limit": 2})).json()
        rest = (await api.get("/api/v1/devices", params={"limit": 2, "offset": 2})).json()
        assert [d["device_id"] for d in first + rest] == everything
        agents = (await api.get("/api/v1/agents", params={"limit": 1})).json()
        assert [a["agent_id"] for a in agents] == [seeded.agent_id]
        assert (await api.get("/api/v1/agents", params={"offset": 1})).json() == []
        for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
            response = await api.get("/api/v1/devices", params=params)
            assert response.status_code == 422, params
            assert response.headers["content-type"] == PROBLEM_JSON


# -- regressions found by Schemathesis ----------------------------------------------------


async def test_times_carry_an_offset_and_errors_are_documented_problems(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    """SQLite gave naive times (not RFC 3339 ``date-time``); 404, 400 and 422 answers were
    undocumented or documented as ``application/json``."""
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        api = seeded.hub.api
        agents = (await api.get("/api/v1/agents")).json()
        assert agents[0]["last_seen"].endswith(("Z", "+00:00"))
        assert agents[0]["state_changed_at"].endswith(("Z", "+00:00"))
        openapi = (await api.get("/openapi.json")).json()
        get_device = openapi["paths"]["/api/v1/devices/{device_id}"]["get"]["responses"]
        assert set(get_device) >= {"200", "401", "403", "404", "422"}
        send = openapi["paths"]["/api/v1/devices/{device_id}/commands"]["post"]["responses"]
        for status in ("400", "401", "403", "404", "413", "422"):
            assert list(send[status]["content"]) == [PROBLEM_JSON], status
        response = await api.post(
            f"/api/v1/devices/{seeded.device_id}/commands",
            content=b"\x80not utf-8",
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["title"] == "Bad Request"


async def test_a_405_allows_every_documented_method_and_query_times_are_rfc3339(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    """``Allow`` named the methods of the first route on a path only (``PUT`` where ``GET`` and
    ``PUT`` are documented); ``start=0`` or a time without an offset passed as a date-time."""
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        api = seeded.hub.api
        for method, path, allowed in (
            ("DELETE", f"/api/v1/agents/{seeded.agent_id}/config", "GET, PUT"),
            ("OPTIONS", "/api/v1/api-keys", "GET, POST"),
            ("PATCH", "/api/v1/dead-letters/1", "DELETE, GET"),
        ):
            response = await api.request(method, path)
            assert response.status_code == 405, (method, path, response.text)
            assert response.headers["allow"] == allowed, (method, path)
            assert response.headers["content-type"] == PROBLEM_JSON
        for start in ("0", "2026-12-03", "2026-12-03T08:00:00", "2026-12-03 08:00:00Z"):
            response = await api.get(
                "/api/v1/telemetry", params={"device_id": seeded.device_id, "start": start}
            )
            assert response.status_code == 422, (start, response.text)
            assert "RFC 3339" in response.json()["detail"]
        for start in ("2026-12-03T08:00:00Z", "2026-12-03t08:00:00.123456789+08:00"):
            response = await api.get(
                "/api/v1/telemetry", params={"device_id": seeded.device_id, "start": start}
            )
            assert response.status_code == 200, (start, response.text)


async def test_an_audit_cursor_beyond_64_bits_is_invalid_not_a_server_error(
    mosquitto_private: Any, tmp_path: Path, unique_id: str
) -> None:
    """``?before=-38402623234994667520`` overflowed SQLite's INTEGER: 500."""
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        for before in ("-38402623234994667520", str(2**63), "0"):
            response = await seeded.hub.api.get("/api/v1/audit", params={"before": before})
            assert response.status_code == 422, (before, response.text)
        response = await seeded.hub.api.get("/api/v1/audit", params={"before": 2**63 - 1})
        assert response.status_code == 200


@pytest.mark.parametrize(
    "csv",
    [
        "agent_id,device_id,profile\n" + "x" * 200_000 + ",b,c\n",
        "agent_id,device_id,profile\na\rb,c,d\n",
    ],
    ids=["huge-field", "bare-cr"],
)
async def test_a_malformed_bulk_csv_is_invalid_not_a_server_error(
    mosquitto_private: Any, tmp_path: Path, unique_id: str, csv: str
) -> None:
    async with seeded_hub(mosquitto_private, tmp_path, unique_id) as seeded:
        response = await seeded.hub.api.post(
            "/api/v1/provisioning/bulk", content=csv, headers={"Content-Type": "text/csv"}
        )
        assert response.status_code == 422, response.text
