"""Webhook signatures, bodies, backoff, Retry-After, and the delivery/retry policy (mock HTTP)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.events.webhook_models import WebhookRow
from cloud_hub.events.webhooks import (
    SIGNATURE_HEADER,
    WebhookDispatcher,
    WebhookSettings,
    backoff_delay,
    event_body,
    parse_retry_after,
    sign,
    verify,
)
from cloud_hub.registry import Registry
from cloud_hub.registry.models import Base

pytestmark = pytest.mark.unit

EVENT = HubEvent(
    kind="alarm",
    ts_ms=1_790_000_000_000,
    data={"rule": "tilt_exceeded", "severity": "major"},
    device_id="pole-1",
    agent_id="agent-1",
)


def test_signature_matches_the_documented_github_example() -> None:
    # the example of GitHub's "Validating webhook deliveries" page: same scheme, same header
    assert (
        sign("It's a Secret to Everybody", b"Hello, World!")
        == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


@settings(max_examples=50)
@given(secret=st.text(min_size=1, max_size=64), body=st.binary(max_size=512))
def test_sign_is_hmac_sha256_and_verifies(secret: str, body: bytes) -> None:
    signature = sign(secret, body)
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify(secret, body, signature)
    assert not verify(secret + "x", body, signature)
    assert not verify(secret, body + b"x", signature)


def test_event_body_is_the_event_as_json() -> None:
    body = json.loads(event_body(EVENT, "d1"))
    assert body == {
        "delivery_id": "d1",
        "kind": "alarm",
        "ts_ms": EVENT.ts_ms,
        "device_id": "pole-1",
        "agent_id": "agent-1",
        "data": EVENT.data,
    }


def test_backoff_grows_is_capped_and_jittered() -> None:
    config = WebhookSettings(backoff_initial_s=1, backoff_max_s=10)
    assert [backoff_delay(n, config, lambda: 1.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert [backoff_delay(n, config, lambda: 0.0) for n in range(1, 4)] == [0.5, 1, 2]


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


Handler = Callable[[httpx.Request], httpx.Response]


class Rig:
    def __init__(self, registry: Registry, handler: Handler, **config: float) -> None:
        self.requests: list[httpx.Request] = []
        self.delays: list[float] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        async def sleep(delay: float) -> None:
            self.delays.append(delay)

        self.registry = registry
        self.bus = EventBus()
        self.dispatcher = WebhookDispatcher(
            self.bus,
            registry,
            WebhookSettings(**config),
            transport=httpx.MockTransport(record),
            sleep=sleep,
            rng=lambda: 1.0,
        )

    async def row(self, webhook_id: str) -> WebhookRow:
        async with self.registry.session() as db:
            row = await db.get(WebhookRow, webhook_id, populate_existing=True)
        assert row is not None
        return row


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    table = Base.metadata.tables["webhooks"]  # if the registry's migrations did not create it
    async with registry.engine.begin() as conn:
        await conn.run_sync(lambda sync: Base.metadata.create_all(sync, tables=[table]))
    yield registry
    await registry.close()


def _replies(*statuses: int, headers: dict[str, str] | None = None) -> Handler:
    queue = list(statuses)

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(queue.pop(0), headers=headers)

    return handler


async def test_retries_5xx_with_backoff_and_keeps_the_delivery_id(registry: Registry) -> None:
    rig = Rig(registry, _replies(500, 503, 200), backoff_initial_s=1)
    await rig.dispatcher.start()
    try:
        row = await rig.dispatcher.create("http://receiver.test/hook", ["alarm"])
        outcome = await rig.dispatcher.deliver(row, EVENT)
    finally:
        await rig.dispatcher.close()
    assert (outcome.delivered, outcome.attempts, outcome.status) == (True, 3, 200)
    assert rig.delays == [1, 2]
    assert len({r.headers["X-Hub-Delivery"] for r in rig.requests}) == 1
    for request in rig.requests:
        assert request.method == "POST" and request.url == "http://receiver.test/hook"
        assert request.headers["X-Hub-Event"] == "alarm"
        assert request.headers["Content-Type"] == "application/json"
        assert verify(row.secret, request.content, request.headers[SIGNATURE_HEADER])
    assert (await rig.row(row.webhook_id)).failed_deliveries == 0


async def test_429_honours_retry_after(registry: Registry) -> None:
    rig = Rig(registry, _replies(429, 200, headers={"Retry-After": "7"}), retry_after_max_s=60)
    await rig.dispatcher.start()
    try:
        row = await rig.dispatcher.create("http://receiver.test/hook")
        outcome = await rig.dispatcher.deliver(row, EVENT)
    finally:
        await rig.dispatcher.close()
    assert outcome.delivered and rig.delays == [7]


async def test_a_4xx_is_final_and_recorded(registry: Registry) -> None:
    rig = Rig(registry, _replies(410))
    await rig.dispatcher.start()
    try:
        row = await rig.dispatcher.create("http://receiver.test/hook")
        outcome = await rig.dispatcher.deliver(row, EVENT)
    finally:
        await rig.dispatcher.close()
    assert (outcome.delivered, outcome.attempts, outcome.error) == (False, 1, "HTTP 410")
    assert rig.delays == []
    stored = await rig.row(row.webhook_id)
    assert stored.failed_deliveries == 1 and stored.last_error is not None
    assert stored.last_error.endswith("HTTP 410")


async def test_network_errors_give_up_after_max_attempts(registry: Registry) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rig = Rig(registry, refuse, max_attempts=4, backoff_initial_s=0.5, backoff_max_s=1.5)
    await rig.dispatcher.start()
    try:
        row = await rig.dispatcher.create("http://receiver.test/hook")
        outcome = await rig.dispatcher.deliver(row, EVENT)
    finally:
        await rig.dispatcher.close()
    assert (outcome.delivered, outcome.attempts, outcome.status) == (False, 4, None)
    assert outcome.error is not None and "ConnectError" in outcome.error
    assert rig.delays == [0.5, 1, 1.5]
    stored = await rig.row(row.webhook_id)
    assert stored.failed_deliveries == 1 and "ConnectError" in (stored.last_error or "")


async def test_a_full_queue_drops_and_counts_without_blocking(registry: Registry) -> None:
    rig = Rig(registry, _replies(), queue_size=2)
    await rig.dispatcher.start()
    try:
        row = await rig.dispatcher.create("http://receiver.test/hook", ["alarm"])
        for _ in range(5):  # nothing delivers (run() not started): the queue fills up
            rig.bus.publish(EVENT)
        rig.bus.publish(HubEvent(kind="telemetry", ts_ms=1, data={}))  # filtered out
        assert rig.dispatcher.counters(row.webhook_id)["dropped"] == 3
        assert [w.webhook_id for w in await rig.dispatcher.webhooks()] == [row.webhook_id]
        assert await rig.dispatcher.remove(row.webhook_id)
        assert not await rig.dispatcher.remove(row.webhook_id)
        assert await rig.dispatcher.webhooks() == []
    finally:
        await rig.dispatcher.close()
