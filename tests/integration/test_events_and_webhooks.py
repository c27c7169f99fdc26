"""The hub's event stream (SSE), alarms API and webhooks, on the real app served by uvicorn.

Events enter where the hub's own producers put them: agent births through ``Ingest.handle``
(which registers devices and their profiles) and readings on ``hub.events``; the alarm engine
turns them into alarms; the SSE stream and webhooks deliver them over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from cloud_hub.alarms import AlarmAlreadyAcknowledged, AlarmEngine
from cloud_hub.api.app import create_app
from cloud_hub.api.keys import create_api_key
from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.events.webhooks import SIGNATURE_HEADER, WebhookSettings, verify
from cloud_hub.hub import Hub
from cloud_hub.registry import Registry
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles import load_builtin_profile
from device_profiles.wire import AgentState, Channel, DeviceInfo, encode, topic
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration

AGENT = "agent-1"
FAST_RETRIES = WebhookSettings(backoff_initial_s=0.05, backoff_max_s=0.2, max_attempts=4)


@dataclass
class Rig:
    hub: Hub
    api: httpx.AsyncClient
    keys: dict[str, str]

    def as_role(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    async def birth(self, *device_ids: str) -> None:
        state = AgentState(
            agent_id=AGENT,
            state="online",
            devices=[DeviceInfo(device_id=d, profile="smart_pole") for d in device_ids],
        )
        await self.hub.ingest.handle(topic(AGENT, Channel.STATE), encode(state))

    def reading(self, device_id: str, ts_ms: int, **values: Any) -> None:
        self.hub.events.publish(
            HubEvent(
                kind="telemetry",
                ts_ms=ts_ms,
                device_id=device_id,
                agent_id=AGENT,
                data={"profile": "smart_pole", "values": values},
            )
        )


@contextlib.asynccontextmanager
async def running(mosquitto: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    extra: dict[str, Any] = {}
    if "webhooks" in HubSettings.model_fields:  # once the hub's settings carry them
        extra["webhooks"] = FAST_RETRIES
    settings = HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        **extra,
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

    async def serve() -> None:
        try:
            await server._serve()  # _serve: without uvicorn's signal handlers
        except SystemExit as exc:  # uvicorn's way of saying the lifespan start-up failed
            raise RuntimeError("the hub did not start (see the log above)") from exc

    task = asyncio.create_task(serve())
    try:
        await eventually(lambda: _started(server, task), timeout=20)
        keys = {}
        for role in ("admin", "operator", "integration", "viewer"):
            keys[role] = (await create_api_key(hub.registry, f"test {role}", role))[1]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api.port}", timeout=10
        ) as api:
            yield Rig(hub, api, keys)
    finally:
        server.should_exit = True
        if not task.done():
            await asyncio.wait_for(task, timeout=20)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool | None:
    if task.done():
        await task
        raise AssertionError("the hub's HTTP server stopped during start-up")
    return True if server.started else None


@pytest.fixture
async def rig(mosquitto_private: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    # a broker of its own: the session broker holds other tests' retained agent states, whose
    # offline alarms would mix with the ones these tests count
    async with running(mosquitto_private, tmp_path, unique_id) as rig:
        await rig.birth("pole-1", "pole-2")
        yield rig


# -- SSE ------------------------------------------------------------------------------------


class SseReader:
    """Reads an SSE stream into (fields, comments) messages."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 10) -> dict[str, str]:
        message: dict[str, str] = {}
        while True:
            line = await asyncio.wait_for(anext(self._lines), timeout)
            if line == "":
                if message:
                    return message
                continue
            name, _, value = line.partition(":")
            key = name or "comment"
            message[key] = value[1:] if value.startswith(" ") else value


async def test_event_stream_filters_orders_and_keeps_alive(rig: Rig) -> None:
    subscribers = len(rig.hub.events._subscriptions)
    url = "/api/v1/events/stream?kinds=telemetry,alarm&device_id=pole-1&heartbeat_s=1"
    async with rig.api.stream("GET", url, headers=rig.as_role("integration")) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        sse = SseReader(response)
        assert await sse.next() == {"retry": "3000"}  # sent once the stream is subscribed

        rig.reading("pole-1", 1_000, tilt=3)
        rig.reading("pole-2", 1_001, tilt=9)  # another device: filtered out
        rig.hub.events.publish(
            HubEvent(
                kind="status",
                ts_ms=1_002,
                device_id="pole-1",
                agent_id=AGENT,
                data={"scope": "device", "state": "online"},
            )
        )  # another kind: filtered out
        rig.reading("pole-1", 1_003, tilt=9)  # raises tilt_exceeded

        received = [await sse.next() for _ in range(3)]
        assert [m["event"] for m in received] == ["telemetry", "telemetry", "alarm"]
        # logged kinds carry their place in the event log; readings carry none
        assert "id" not in received[0] and "id" not in received[1]
        assert int(received[2]["id"]) >= 1
        first, second, alarm = (json.loads(m["data"]) for m in received)
        assert (first["ts_ms"], first["device_id"], first["data"]["values"]) == (
            1_000,
            "pole-1",
            {"tilt": 3},
        )
        assert second["ts_ms"] == 1_003
        assert alarm["data"]["rule"] == "tilt_exceeded"
        assert alarm["data"]["transition"] == "raised" and alarm["device_id"] == "pole-1"

        assert await sse.next(timeout=5) == {"comment": "keepalive"}
        assert len(rig.hub.events._subscriptions) == subscribers + 1

    async def unsubscribed() -> bool | None:
        return True if len(rig.hub.events._subscriptions) == subscribers else None

    await eventually(unsubscribed, timeout=10)


def _command_event(command_id: str, status: str) -> HubEvent:
    return HubEvent(
        kind="command",
        ts_ms=2_000,
        device_id="pole-1",
        agent_id=AGENT,
        data={"command_id": command_id, "name": "set_dimming", "status": status, "detail": ""},
    )


async def test_a_reconnecting_stream_gets_what_it_missed_and_nothing_twice(rig: Rig) -> None:
    url = "/api/v1/events/stream?kinds=command,alarm&heartbeat_s=1"
    headers = rig.as_role("integration")
    async with rig.api.stream("GET", url, headers=headers) as response:
        sse = SseReader(response)
        assert await sse.next() == {"retry": "3000"}
        rig.hub.events.publish(_command_event("c1", "queued"))
        first = await sse.next()
        assert (
            first["event"] == "command" and json.loads(first["data"])["data"]["status"] == "queued"
        )
    last_id = first["id"]
    # while nobody listens: a command moves on, an alarm is raised
    rig.hub.events.publish(_command_event("c1", "sent"))
    rig.hub.events.publish(_command_event("c1", "succeeded"))
    rig.reading("pole-2", 3_000, tilt=12)  # tilt_exceeded on pole-2

    async def logged() -> bool | None:
        events, _ = await rig.hub.event_log.read(int(last_id), ["command", "alarm"])
        return True if len(events) >= 3 else None

    await eventually(logged)
    async with rig.api.stream(
        "GET", url, headers={**headers, "Last-Event-ID": last_id}
    ) as response:
        sse = SseReader(response)
        assert await sse.next() == {"retry": "3000"}
        missed = [await sse.next() for _ in range(3)]
        kinds = [(m["event"], json.loads(m["data"])["data"].get("status")) for m in missed]
        assert kinds == [("command", "sent"), ("command", "succeeded"), ("alarm", None)]
        ids = [int(m["id"]) for m in missed]
        assert ids == sorted(ids) and ids[0] > int(last_id)
        assert await sse.next(timeout=5) == {"comment": "keepalive"}  # nothing repeated
    # the same through the query parameter, for clients that cannot set headers
    async with rig.api.stream("GET", f"{url}&last_event_id={ids[1]}", headers=headers) as response:
        sse = SseReader(response)
        assert await sse.next() == {"retry": "3000"}
        assert int((await sse.next())["id"]) == ids[2]


async def test_a_stream_refuses_an_id_it_never_gave(rig: Rig) -> None:
    response = await rig.api.get(
        "/api/v1/events/stream",
        headers={**rig.as_role("integration"), "Last-Event-ID": "yesterday"},
    )
    assert response.status_code == 422
    assert "Last-Event-ID" in response.json()["detail"]


async def test_stream_rejects_unknown_kinds(rig: Rig) -> None:
    response = await rig.api.get(
        "/api/v1/events/stream?kinds=telemetry,gossip", headers=rig.as_role("admin")
    )
    assert response.status_code == 422
    assert "gossip" in response.json()["detail"]


# -- alarms API -----------------------------------------------------------------------------


async def _alarm(rig: Rig, **query: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        response = await rig.api.get("/api/v1/alarms", params=query, headers=rig.as_role("viewer"))
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        return items[0] if items else None

    return await eventually(found, timeout=10)


async def test_alarms_are_listed_read_and_acknowledged(rig: Rig) -> None:
    rig.reading("pole-1", 5_000, door_open=True)
    alarm = await _alarm(rig, device_id="pole-1", state="active")
    assert (alarm["rule"], alarm["severity"], alarm["value"]) == ("door_open", "minor", True)
    one = await rig.api.get(f"/api/v1/alarms/{alarm['alarm_id']}", headers=rig.as_role("viewer"))
    assert one.status_code == 200 and one.json() == alarm
    missing = await rig.api.get("/api/v1/alarms/nope", headers=rig.as_role("viewer"))
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")

    ack_url = f"/api/v1/alarms/{alarm['alarm_id']}/acknowledge"
    acked = await rig.api.post(ack_url, json={"note": "crew sent"}, headers=rig.as_role("operator"))
    assert acked.status_code == 200, acked.text
    assert acked.json()["state"] == "acknowledged"
    assert acked.json()["acknowledged_by"] == "test operator"
    again = await rig.api.post(ack_url, json={"note": "me too"}, headers=rig.as_role("admin"))
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert again.json()["title"] == "Conflict"

    rig.reading("pole-1", 6_000, door_open=False)
    cleared = await _alarm(rig, device_id="pole-1", state="cleared")
    assert (
        cleared["alarm_id"] == alarm["alarm_id"] and cleared["acknowledged_by"] == "test operator"
    )

    for i in range(3):  # three more alarms on pole-2, listed two at a time
        rig.reading("pole-2", 7_000 + i, tilt=9 if i % 2 == 0 else 0)
    rig.reading("pole-2", 7_010, one_key_alarm=True)
    await _alarm(rig, severity="critical")
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (
            await rig.api.get("/api/v1/alarms", params=params, headers=rig.as_role("viewer"))
        ).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # the shared broker may hold other tests' agents (their offline alarms): count ours
    ours = [a for a in seen if a["device_id"] in {"pole-1", "pole-2"}]
    assert len(ours) == 4 and len({a["alarm_id"] for a in seen}) == len(seen)
    bad = await rig.api.get("/api/v1/alarms?state=sleeping", headers=rig.as_role("viewer"))
    assert bad.status_code == 422


async def test_authentication_and_roles(rig: Rig) -> None:
    for method, url in (
        ("GET", "/api/v1/alarms"),
        ("POST", "/api/v1/alarms/x/acknowledge"),
        ("GET", "/api/v1/events/stream"),
        ("GET", "/api/v1/webhooks"),
        ("POST", "/api/v1/webhooks"),
    ):
        response = await rig.api.request(method, url, json={})
        assert response.status_code == 401, (method, url)
        viewer = await rig.api.request(method, url, json={}, headers=rig.as_role("viewer"))
        assert viewer.status_code == (200 if url == "/api/v1/alarms" else 403), (method, url)
    operator = await rig.api.get("/api/v1/webhooks", headers=rig.as_role("operator"))
    assert operator.status_code == 403


# -- webhooks -------------------------------------------------------------------------------


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server (keep-alive, Content-Length bodies) answering with
    scripted statuses, then 200; every request is recorded."""

    statuses: list[int]
    received: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)
    answered: list[int] = field(default_factory=list)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status = self.statuses.pop(0) if self.statuses else 200
                self.answered.append(status)
                self.received.put_nowait(Delivery(headers, body))
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}/hooks/iot"
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            await server.wait_closed()


async def test_webhook_deliveries_are_signed_retried_and_delivered_once(rig: Rig) -> None:
    receiver = Receiver(statuses=[500, 500])
    async with receiver.serving() as url:
        created = await rig.api.post(
            "/api/v1/webhooks", json={"url": url, "kinds": ["alarm"]}, headers=rig.as_role("admin")
        )
        assert created.status_code == 201, created.text
        hook = created.json()
        secret = hook["secret"]
        listed = await rig.api.get("/api/v1/webhooks", headers=rig.as_role("admin"))
        assert [h["webhook_id"] for h in listed.json()] == [hook["webhook_id"]]
        assert "secret" not in listed.json()[0]

        rig.reading("pole-1", 9_000, tilt=0)  # telemetry: not a kind this webhook wants
        rig.reading("pole-1", 9_001, one_key_alarm=True)
        attempts = [await asyncio.wait_for(receiver.received.get(), 10) for _ in range(3)]
        assert receiver.answered == [500, 500, 200]
        assert len({a.headers["x-hub-delivery"] for a in attempts}) == 1
        for attempt in attempts:
            assert attempt.headers["x-hub-event"] == "alarm"
            assert verify(secret, attempt.body, attempt.headers[SIGNATURE_HEADER.lower()])
            assert not verify("wrong", attempt.body, attempt.headers[SIGNATURE_HEADER.lower()])
        body = json.loads(attempts[0].body)
        assert body["kind"] == "alarm" and body["data"]["rule"] == "one_key_alarm"
        assert body["delivery_id"] == attempts[0].headers["x-hub-delivery"]

        # the next event is a new delivery, and nothing of the first is sent again
        rig.reading("pole-1", 9_002, one_key_alarm=False)
        following = await asyncio.wait_for(receiver.received.get(), 10)
        assert json.loads(following.body)["data"]["transition"] == "cleared"
        assert following.headers["x-hub-delivery"] != attempts[0].headers["x-hub-delivery"]
        assert receiver.received.empty() and receiver.answered == [500, 500, 200, 200]

        async def counted() -> dict[str, Any] | None:
            hooks = (await rig.api.get("/api/v1/webhooks", headers=rig.as_role("admin"))).json()
            return hooks[0] if hooks[0]["delivered"] == 2 else None

        stats = await eventually(counted, timeout=10)
        assert (stats["retries"], stats["failed_deliveries"], stats["dropped"]) == (2, 0, 0)

        deleted = await rig.api.delete(
            f"/api/v1/webhooks/{hook['webhook_id']}", headers=rig.as_role("admin")
        )
        assert deleted.status_code == 204
        assert (await rig.api.get("/api/v1/webhooks", headers=rig.as_role("admin"))).json() == []
        gone = await rig.api.delete(
            f"/api/v1/webhooks/{hook['webhook_id']}", headers=rig.as_role("admin")
        )
        assert gone.status_code == 404


async def test_webhook_urls_are_validated(rig: Rig) -> None:
    response = await rig.api.post(
        "/api/v1/webhooks", json={"url": "ftp://example.org/x"}, headers=rig.as_role("admin")
    )
    assert response.status_code == 422


# -- PostgreSQL -----------------------------------------------------------------------------


async def test_alarm_life_cycle_and_paging_on_postgresql(pg_url: str) -> None:
    """The store's conditional updates, RETURNING and keyset paging on PostgreSQL too."""
    profile = load_builtin_profile("smart_pole")
    bus = EventBus()

    def reading(device_id: str, ts_ms: int, **values: Any) -> HubEvent:
        data = {"profile": "smart_pole", "values": values}
        return HubEvent("telemetry", ts_ms, data, device_id=device_id, agent_id=AGENT)

    registry = Registry(pg_url)
    await registry.start()
    try:
        engine = AlarmEngine(bus, registry, lambda _: profile)
        await engine.start()
        await engine.handle(reading("pole-1", 1_000, tilt=9, pm25=80))
        await engine.handle(reading("pole-2", 1_000, tilt=9))  # same raised_at: tie on alarm_id
        await engine.handle(reading("pole-3", 2_000, door_open=True))
        [tilt] = (await engine.store.page(device_id="pole-1")).items
        acked = await engine.acknowledge(tilt.alarm_id, "op", "seen")
        assert acked.state == "acknowledged"
        with pytest.raises(AlarmAlreadyAcknowledged):
            await engine.acknowledge(tilt.alarm_id, "op", "again")
        engine.close()

        engine = AlarmEngine(bus, registry, lambda _: profile)  # a restarted hub
        await engine.start()
        await engine.handle(reading("pole-1", 300_000, tilt=9, pm25=80))  # no duplicate
        await engine.handle(reading("pole-1", 601_000, tilt=0, pm25=80))  # timer survived
        rows = {r.rule: r for r in (await engine.store.page(device_id="pole-1")).items}
        assert rows["tilt_exceeded"].state == "cleared"
        assert rows["tilt_exceeded"].acknowledged_by == "op"
        assert rows["pm25_high"].state == "active"

        seen, cursor = [], None
        while True:
            page = await engine.store.page(limit=1, cursor=cursor)
            seen += [r.alarm_id for r in page.items]
            if (cursor := page.next_cursor) is None:
                break
        assert len(seen) == len(set(seen)) == 4
        engine.close()
    finally:
        await registry.close()
