"""Webhooks: hub events POSTed as signed JSON to other systems' URLs.

Two paths lead to a receiver:

- **From the in-process bus** (the kinds in ``bus_kinds``; the hub uses it for telemetry
  only): each webhook has its own bounded subscription to the hub's
  :class:`~cloud_hub.events.bus.EventBus` and its own delivery task, so a slow or dead receiver
  never slows ingest nor other webhooks: when its queue is full the oldest waiting event is
  dropped and counted. Best effort: what is queued is lost on a restart. With several hub
  processes each delivers the readings it ingested (each reading is ingested by one process).
- **From the durable event log** (status, alarm and command events): the leader's
  :class:`~cloud_hub.events.relay.WebhookRelay` reads ``hub_events`` after each webhook's
  cursor and calls :meth:`WebhookDispatcher.deliver` here, so those survive restarts and
  failovers and are delivered once however many processes saw them.

A webhook with a ``site`` gets only the events of that site (an event's site is its device's,
or its agent's: :mod:`cloud_hub.sites`); both paths ask :meth:`WebhookDispatcher.wants`.

Every process re-reads the list of active webhooks every ``refresh_s``, so a webhook created
or deleted through one process's API reaches the others.

A delivery is ``POST <url>`` with the event as JSON and these headers::

    X-Hub-Event: alarm                       the event kind
    X-Hub-Delivery: 6f1c...                  one id per delivery, the same on every retry (and,
                                             for logged events, across restarts and failovers)
    X-Hub-Signature-256: sha256=<hex>        HMAC-SHA256 of the exact body, keyed by the secret

Network errors, timeouts, 5xx and 429 are retried with exponential backoff and jitter (a
``Retry-After`` header, in seconds or as an HTTP date, is honoured); other answers are final.
After ``max_attempts`` the delivery is given up, counted in the webhook's row
(``failed_deliveries``, ``last_error``) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import secrets
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.events.bus import EventBus, HubEvent, Subscription
from cloud_hub.events.log_models import HubEventRow
from cloud_hub.events.webhook_models import WebhookRow
from cloud_hub.registry import Registry, utcnow
from cloud_hub.sites import SiteDirectory
from iot_runtime.retry_after import parse_retry_after

__all__ = [
    "SIGNATURE_HEADER",
    "DeliveryOutcome",
    "WebhookDispatcher",
    "WebhookSettings",
    "backoff_delay",
    "event_body",
    "parse_retry_after",
    "sign",
    "verify",
]

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
_USER_AGENT = "city-iot-hub-webhooks/1"


class WebhookSettings(BaseModel):
    """How webhooks are delivered."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=6, ge=1, le=50, description="Attempts per delivery.")
    backoff_initial_s: float = Field(default=1.0, gt=0, description="Delay before the 2nd try.")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Longest delay between tries.")
    retry_after_max_s: float = Field(
        default=300.0, gt=0, description="A receiver's Retry-After is honoured up to this."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Per request.")
    queue_size: int = Field(
        default=1000, ge=1, description="Events waiting per webhook before the oldest drop."
    )
    refresh_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often each hub process re-reads the webhooks (others' API changes).",
    )


def sign(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Whether ``signature`` (an ``X-Hub-Signature-256`` value) signs ``body``; constant time."""
    return hmac.compare_digest(sign(secret, body), signature)


def event_body(event: HubEvent, delivery_id: str) -> bytes:
    """The JSON body delivered for ``event``."""
    document = {
        "delivery_id": delivery_id,
        "kind": event.kind,
        "ts_ms": event.ts_ms,
        "device_id": event.device_id,
        "agent_id": event.agent_id,
        "data": event.data,
    }
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def backoff_delay(
    attempt: int, settings: WebhookSettings, rng: Callable[[], float] = random.random
) -> float:
    """Delay after failed attempt ``attempt`` (1-based): exponential, capped, with jitter
    (between half and all of the exponential value, so receivers are not hit in lockstep)."""
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2.0 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * rng())


@dataclass(frozen=True)
class DeliveryOutcome:
    delivered: bool
    attempts: int
    status: int | None  # the last HTTP status, None if the last attempt got no answer
    error: str | None  # why the delivery failed, None if delivered


@dataclass
class _Worker:
    row: WebhookRow
    subscription: Subscription | None  # None: none of its kinds come from the bus
    task: asyncio.Task[None] | None = None


class WebhookDispatcher:
    """Owns the webhooks: their rows, counters, bus subscriptions and delivery tasks.

    ``start()`` loads the active webhooks and subscribes each to the bus for the kinds in
    ``bus_kinds`` (all kinds if None; events are queued from then on); ``run()`` delivers and
    refreshes the set until cancelled; ``close()`` stops everything. ``create``/``remove``
    change the set while running (and call the ``on_change`` listeners). ``deliver()`` is the
    one delivery policy (signature, retries, backoff), also used by the durable relay.
    """

    def __init__(
        self,
        bus: EventBus,
        registry: Registry,
        settings: WebhookSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        bus_kinds: Collection[str] | None = None,
        sites: SiteDirectory | None = None,
    ) -> None:
        self.bus = bus
        #: which site each event belongs to, for webhooks scoped to a site
        self.sites = sites if sites is not None else SiteDirectory(registry)
        self.settings = settings if settings is not None else WebhookSettings()
        self.stats: Counter[str] = Counter()
        #: called (without arguments) when this process creates or removes a webhook
        self.on_change: list[Callable[[], None]] = []
        self._bus_kinds = frozenset(bus_kinds) if bus_kinds is not None else None
        self._session = registry.session
        self._transport = transport
        self._sleep = sleep
        self._rng = rng
        self._client: httpx.AsyncClient | None = None
        self._workers: dict[str, _Worker] = {}
        self._counts: dict[str, Counter[str]] = {}
        self._group: asyncio.TaskGroup | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.settings.timeout_s,
                headers={"User-Agent": _USER_AGENT},
            )
        for row in await self.webhooks():
            if row.webhook_id not in self._workers:
                self._add(row)
        log.info("webhooks started", webhooks=len(self._workers))

    async def run(self) -> None:
        """Deliver bus events, and follow other processes' changes, until cancelled."""
        if self._client is None:
            await self.start()
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                for worker in self._workers.values():
                    self._launch(worker)
                while True:  # workers come and go; run until cancelled
                    await asyncio.sleep(self.settings.refresh_s)
                    try:
                        await self.refresh()
                    except SQLAlchemyError as exc:
                        log.warning("webhooks not refreshed", error=str(exc))
            finally:
                self._group = None

    async def refresh(self) -> None:
        """Follow the registry: start webhooks created, stop those removed, elsewhere."""
        known = set(self._workers)  # one created here while we read is not "removed"
        rows = {row.webhook_id: row for row in await self.webhooks()}
        for webhook_id, row in rows.items():
            if webhook_id not in self._workers:
                self._add(row)
                log.info("webhook added by another process", webhook_id=webhook_id)
        for webhook_id in [w for w in known if w not in rows and w in self._workers]:
            await self._stop(webhook_id)
            log.info("webhook removed by another process", webhook_id=webhook_id)

    async def close(self) -> None:
        for webhook_id in list(self._workers):
            await self._stop(webhook_id)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the set of webhooks ----------------------------------------------------------------

    async def create(
        self, url: str, kinds: Sequence[str] = (), site: str | None = None
    ) -> WebhookRow:
        """A new webhook with a fresh secret (in the returned row: show it once). It gets
        the events logged from now on (only ``site``'s, if given): its cursor starts at the
        end of the event log."""
        row = WebhookRow(
            webhook_id=uuid.uuid4().hex,
            url=url,
            kinds=sorted(set(kinds)),
            site=site,
            secret=secrets.token_urlsafe(32),
            created_at=utcnow(),
            active=True,
            failed_deliveries=0,
        )
        async with self._session.begin() as db:
            row.event_cursor = int(await db.scalar(select(func.max(HubEventRow.seq))) or 0)
            db.add(row)
        self._add(row)
        log.info("webhook created", webhook_id=row.webhook_id, url=url, kinds=row.kinds, site=site)
        self._changed()
        return row

    async def webhooks(self) -> list[WebhookRow]:
        async with self._session() as db:
            query = select(WebhookRow).where(WebhookRow.active.is_(True))
            return list((await db.scalars(query.order_by(WebhookRow.created_at))).all())

    async def remove(self, webhook_id: str) -> bool:
        """Deactivate a webhook and stop its deliveries; False if there is no such webhook."""
        async with self._session.begin() as db:
            row = await db.get(WebhookRow, webhook_id)
            if row is None or not row.active:
                return False
            row.active = False
        await self._stop(webhook_id)
        log.info("webhook removed", webhook_id=webhook_id)
        self._changed()
        return True

    def _changed(self) -> None:
        for listener in self.on_change:
            listener()

    def counters(self, webhook_id: str) -> Counter[str]:
        """A running webhook's counters in this process: delivered, failed, retries (both
        paths), dropped (bus queue overflow)."""
        worker = self._workers.get(webhook_id)
        if worker is None:
            return Counter()
        counts = Counter(self._counts.get(webhook_id, {}))
        counts["dropped"] = worker.subscription.dropped if worker.subscription else 0
        return counts

    def record(self, webhook_id: str, outcome: DeliveryOutcome) -> None:
        """Count a delivery's outcome for the webhook (and in ``stats``)."""
        counts = self._counts.setdefault(webhook_id, Counter())
        counts["retries"] += outcome.attempts - 1
        result = "delivered" if outcome.delivered else "failed"
        counts[result] += 1
        self.stats[result] += 1

    def _add(self, row: WebhookRow) -> None:
        kinds, bus_kinds = frozenset(row.kinds), self._bus_kinds

        def accepts(event: HubEvent) -> bool:
            return (not kinds or event.kind in kinds) and (
                bus_kinds is None or event.kind in bus_kinds
            )

        from_bus = bus_kinds is None or not kinds or bool(kinds & bus_kinds)
        subscription = self.bus.subscribe(accepts, self.settings.queue_size) if from_bus else None
        worker = _Worker(row, subscription)
        self._workers[row.webhook_id] = worker
        if self._group is not None:
            self._launch(worker)

    def _launch(self, worker: _Worker) -> None:
        assert self._group is not None
        if worker.task is None and worker.subscription is not None:
            worker.task = self._group.create_task(
                self._deliver_loop(worker), name=f"webhook-{worker.row.webhook_id}"
            )

    async def _stop(self, webhook_id: str) -> None:
        worker = self._workers.pop(webhook_id, None)
        self._counts.pop(webhook_id, None)
        if worker is None:
            return
        if worker.subscription is not None:
            self.bus.unsubscribe(worker.subscription)
        if worker.task is not None and not worker.task.done():
            worker.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker.task

    # -- delivery ---------------------------------------------------------------------------

    async def wants(self, row: WebhookRow, event: HubEvent) -> bool:
        """Whether the webhook gets the event by its site (its kinds are filtered where the
        events are read)."""
        return await self.sites.event_in(event, row.site)

    async def _deliver_loop(self, worker: _Worker) -> None:
        assert worker.subscription is not None
        async for event in worker.subscription:
            try:
                if not await self.wants(worker.row, event):
                    continue
                outcome = await self.deliver(worker.row, event)
            except Exception:  # a bug must not stop this webhook, nor the hub's task group
                log.exception("webhook delivery crashed", webhook_id=worker.row.webhook_id)
                outcome = DeliveryOutcome(False, 1, None, "crashed")
            self.record(worker.row.webhook_id, outcome)

    async def deliver(
        self, row: WebhookRow, event: HubEvent, delivery_id: str | None = None
    ) -> DeliveryOutcome:
        """POST one event to one webhook, retrying as the settings say; records a failure.

        ``delivery_id`` (``X-Hub-Delivery``) is a fresh random id unless given (the relay
        derives it from the logged event, so it survives restarts and failovers)."""
        if self._client is None:
            raise RuntimeError("WebhookDispatcher.start() has not been called")
        delivery_id = delivery_id or uuid.uuid4().hex
        body = event_body(event, delivery_id)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Event": event.kind,
            "X-Hub-Delivery": delivery_id,
            SIGNATURE_HEADER: sign(row.secret, body),
        }
        status: int | None = None
        error = "not attempted"
        for attempt in range(1, self.settings.max_attempts + 1):
            retry_after: float | None = None
            try:
                response = await self._client.post(row.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                status = response.status_code
                if response.is_success:
                    log.debug(
                        "webhook delivered",
                        webhook_id=row.webhook_id,
                        delivery_id=delivery_id,
                        attempts=attempt,
                    )
                    return DeliveryOutcome(True, attempt, status, None)
                error = f"HTTP {status}"
                if status != 429 and status < 500:
                    break  # the receiver refuses it; asking again will not help
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if attempt == self.settings.max_attempts:
                break
            delay = (
                retry_after
                if retry_after is not None
                else backoff_delay(attempt, self.settings, self._rng)
            )
            delay = min(delay, self.settings.retry_after_max_s)
            log.debug(
                "webhook delivery failed, retrying",
                webhook_id=row.webhook_id,
                error=error,
                retry_in_s=round(delay, 3),
            )
            await self._sleep(delay)
        await self._record_failure(row, delivery_id, error)
        return DeliveryOutcome(False, attempt, status, error)

    async def _record_failure(self, row: WebhookRow, delivery_id: str, error: str) -> None:
        log.warning(
            "webhook delivery given up",
            webhook_id=row.webhook_id,
            url=row.url,
            delivery_id=delivery_id,
            error=error,
        )
        try:
            async with self._session.begin() as db:
                await db.execute(
                    update(WebhookRow)
                    .where(WebhookRow.webhook_id == row.webhook_id)
                    .values(
                        failed_deliveries=WebhookRow.failed_deliveries + 1,
                        last_error=f"delivery {delivery_id}: {error}",
                        last_failure_at=utcnow(),
                    )
                )
        except SQLAlchemyError as exc:
            log.error(
                "could not record a webhook failure", webhook_id=row.webhook_id, error=str(exc)
            )
