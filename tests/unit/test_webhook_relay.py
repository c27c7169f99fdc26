"""The webhook relay on a SQLite registry and mock HTTP: order, cursor, restarts, stable ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.events.log import EventLog, EventLogSettings
from cloud_hub.events.relay import WebhookRelay, delivery_id
from cloud_hub.events.webhook_models import WebhookRow
from cloud_hub.events.webhooks import SIGNATURE_HEADER, WebhookDispatcher, WebhookSettings, verify
from cloud_hub.registry import Registry, utcnow
from tests.helpers import eventually

pytestmark = pytest.mark.unit

Handler = Callable[[httpx.Request], httpx.Response]


def command(command_id: str, status: str) -> HubEvent:
    data = {"command_id": command_id, "name": "lamp_on", "status": status, "detail": ""}
    return HubEvent("command", 1_000, data, "pole-1", "agent-1")


def agent_status(state: str, ts_ms: int) -> HubEvent:
    return HubEvent("status", ts_ms, {"scope": "agent", "state": state}, agent_id="agent-1")


class Process:
    """What one hub process has of webhooks: a dispatcher, the event log and a relay."""

    def __init__(self, registry: Registry, handler: Handler) -> None:
        self.requests: asyncio.Queue[httpx.Request] = asyncio.Queue()

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.put_nowait(request)
            return handler(request)

        async def sleep(_: float) -> None:
            await asyncio.sleep(0.01)  # retries without waiting for the real backoff

        self.log = EventLog(registry, EventBus(), EventLogSettings(poll_interval_s=0.05))
        self.dispatcher = WebhookDispatcher(
            self.log.bus,
            registry,
            WebhookSettings(max_attempts=50),
            transport=httpx.MockTransport(record),
            sleep=sleep,
            bus_kinds=("telemetry",),
        )
        self.relay = WebhookRelay(self.dispatcher, self.log, registry)

    @contextlib.asynccontextmanager
    async def relaying(self) -> AsyncIterator[None]:
        await self.dispatcher.start()
        tasks = [asyncio.create_task(self.relay.run()), asyncio.create_task(self.dispatcher.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.dispatcher.close()

    async def received(self, count: int) -> list[httpx.Request]:
        return [await asyncio.wait_for(self.requests.get(), 10) for _ in range(count)]


def ok(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    yield registry
    await registry.close()


async def _cursor(registry: Registry, webhook_id: str) -> int:
    async with registry.session() as db:
        row = await db.get(WebhookRow, webhook_id, populate_existing=True)
    assert row is not None
    return row.event_cursor


async def _settled(registry: Registry, webhook_id: str, seq: int) -> None:
    """Wait until the webhook's cursor reached ``seq``."""

    async def reached() -> bool | None:
        return True if await _cursor(registry, webhook_id) >= seq else None

    await eventually(reached, timeout=10)


async def test_events_are_delivered_in_order_with_stable_ids_and_the_cursor_follows(
    registry: Registry,
) -> None:
    hub = Process(registry, ok)
    await hub.log.append([command("old", "queued")])  # before the webhook: not for it
    await hub.dispatcher.start()
    row = await hub.dispatcher.create("http://receiver.test/hook")
    events = [command("c1", "queued"), agent_status("online", 5), command("c1", "sent")]
    await hub.log.append(events)
    logged, _ = await hub.log.read(row.event_cursor)
    async with hub.relaying():
        requests = await hub.received(3)
        await _settled(registry, row.webhook_id, logged[-1].seq)
    bodies = [json.loads(r.content) for r in requests]
    assert [(b["kind"], b["data"].get("status", b["data"].get("state"))) for b in bodies] == [
        ("command", "queued"),
        ("status", "online"),
        ("command", "sent"),
    ]
    for request, entry in zip(requests, logged, strict=True):
        expected = delivery_id(row.webhook_id, entry.key)
        assert request.headers["X-Hub-Delivery"] == expected
        assert json.loads(request.content)["delivery_id"] == expected
        assert verify(row.secret, request.content, request.headers[SIGNATURE_HEADER])
    assert hub.requests.empty()
    assert hub.dispatcher.counters(row.webhook_id)["delivered"] == 0  # a fresh dispatcher
    assert await _cursor(registry, row.webhook_id) == logged[-1].seq


async def test_a_restart_resumes_after_the_cursor_with_the_same_delivery_id(
    registry: Registry,
) -> None:
    def fails_on_c2(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            503 if json.loads(request.content)["data"]["command_id"] == "c2" else 200
        )

    first = Process(registry, fails_on_c2)
    await first.dispatcher.start()
    row = await first.dispatcher.create("http://receiver.test/hook")
    await first.log.append([command("c1", "queued"), command("c2", "queued")])
    logged, _ = await first.log.read(row.event_cursor)
    async with first.relaying():
        done, _, retried = await first.received(3)  # c1, then c2 twice (being retried)
        assert json.loads(done.content)["data"]["command_id"] == "c1"
        await _settled(registry, row.webhook_id, logged[0].seq)
    assert await _cursor(registry, row.webhook_id) == logged[0].seq  # c2 not done
    assert (await first.received(0)) == []

    second = Process(registry, ok)  # the hub restarted (or another process took over)
    async with second.relaying():
        [again] = await second.received(1)
        await _settled(registry, row.webhook_id, logged[1].seq)
    assert json.loads(again.content)["data"]["command_id"] == "c2"
    assert again.headers["X-Hub-Delivery"] == retried.headers["X-Hub-Delivery"]
    assert again.headers["X-Hub-Delivery"] == delivery_id(row.webhook_id, logged[1].key)
    assert second.requests.empty()  # c1 was not sent again


async def test_a_refused_event_is_given_up_and_the_cursor_moves_on(registry: Registry) -> None:
    def refuses_c1(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            410 if json.loads(request.content)["data"]["command_id"] == "c1" else 200
        )

    hub = Process(registry, refuses_c1)
    await hub.dispatcher.start()
    row = await hub.dispatcher.create("http://receiver.test/hook")
    await hub.log.append([command("c1", "queued"), command("c2", "queued")])
    logged, _ = await hub.log.read(row.event_cursor)
    async with hub.relaying():
        await hub.received(2)
        await _settled(registry, row.webhook_id, logged[-1].seq)
        counts = hub.dispatcher.counters(row.webhook_id)
    assert (counts["delivered"], counts["failed"]) == (1, 1)
    async with registry.session() as db:
        stored = await db.get(WebhookRow, row.webhook_id, populate_existing=True)
    assert stored is not None and stored.failed_deliveries == 1


async def test_kinds_are_filtered_and_the_cursor_passes_what_is_not_wanted(
    registry: Registry,
) -> None:
    hub = Process(registry, ok)
    await hub.dispatcher.start()
    row = await hub.dispatcher.create("http://receiver.test/hook", ["command"])
    await hub.log.append([agent_status("online", i) for i in range(3)])
    await hub.log.append([command("c1", "queued"), agent_status("offline", 9)])
    head = await hub.log.head()
    async with hub.relaying():
        [request] = await hub.received(1)
        await _settled(registry, row.webhook_id, head)
    assert json.loads(request.content)["kind"] == "command"
    assert hub.requests.empty()


async def test_a_webhook_created_while_relaying_starts_at_once(registry: Registry) -> None:
    hub = Process(registry, ok)
    async with hub.relaying():
        row = await hub.dispatcher.create("http://receiver.test/hook")
        await hub.log.start()
        hub.log.bus.publish(command("c1", "queued"))  # as producers do: through the bus
        appender = asyncio.create_task(hub.log.run())
        try:
            [request] = await hub.received(1)
        finally:
            appender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await appender
        assert request.headers["X-Hub-Event"] == "command"
        assert await hub.dispatcher.remove(row.webhook_id)


async def test_prune_keeps_what_a_webhook_still_needs(registry: Registry) -> None:
    hub = Process(registry, ok)
    await hub.dispatcher.start()
    row = await hub.dispatcher.create("http://receiver.test/hook")
    await hub.log.append([command(f"c{i}", "queued") for i in range(4)])
    logged, _ = await hub.log.read(0)
    async with registry.session.begin() as db:  # the webhook is done with the first two
        stored = await db.get(WebhookRow, row.webhook_id)
        assert stored is not None
        stored.event_cursor = logged[1].seq
    assert await hub.relay.prune() == 0  # nothing is older than the retention yet
    later = WebhookRelay(
        hub.dispatcher, hub.log, registry, clock=lambda: utcnow() + timedelta(days=8)
    )
    assert await later.prune() == 2
    remaining, _ = await hub.log.read(0)
    assert [e.seq for e in remaining] == [e.seq for e in logged[2:]]
    await hub.dispatcher.remove(row.webhook_id)
    assert await later.prune() == 2  # no active webhook: everything old goes
    await hub.dispatcher.close()


async def test_telemetry_comes_from_the_bus_of_each_process_that_knows_the_webhook(
    registry: Registry,
) -> None:
    """Best effort: each process delivers the readings it ingested, once it has read the
    webhook from the registry (refresh); logged kinds never come from the bus."""
    one, two = Process(registry, ok), Process(registry, ok)
    async with one.relaying(), two.relaying():
        row = await one.dispatcher.create("http://receiver.test/hook", ["telemetry", "alarm"])
        await two.dispatcher.refresh()  # what its run() does every refresh_s
        reading = HubEvent("telemetry", 5, {"values": {"tilt": 1}}, "pole-1", "agent-1")
        two.log.bus.publish(reading)
        [request] = await two.received(1)
        assert request.headers["X-Hub-Event"] == "telemetry"
        two.log.bus.publish(HubEvent("alarm", 6, {"alarm_id": "a", "transition": "raised"}))
        assert await one.dispatcher.remove(row.webhook_id)
        await two.dispatcher.refresh()
        two.log.bus.publish(reading)  # removed elsewhere: no longer delivered here
        assert two.dispatcher.counters(row.webhook_id) == {}
    assert one.requests.empty() and two.requests.empty()  # the alarm went nowhere: not logged
