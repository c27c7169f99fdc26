"""The leader's webhook relay: durable events from ``hub_events`` to every webhook, in order.

One task per active webhook reads the event log (:class:`~cloud_hub.events.log.EventLog`) in
``seq`` order after the webhook's persisted cursor (``webhooks.event_cursor``), delivers each
event with the dispatcher's policy (signature, retries, backoff, ``Retry-After``;
:meth:`~cloud_hub.events.webhooks.WebhookDispatcher.deliver`) and moves the cursor on once that
delivery is finished, delivered or given up, as the in-memory path does. A slow receiver holds
up only its own webhook.

A webhook with a ``site`` is delivered only that site's events
(:meth:`~cloud_hub.events.webhooks.WebhookDispatcher.wants`); its cursor moves past the others.

``X-Hub-Delivery`` is derived from the webhook and the event's key (a UUID 5), so it is the
same on every retry, after a restart and after a failover: a receiver de-duplicates on it. The
guarantee is at least once: a leader that dies after a delivery and before saving the cursor
has the event delivered again, with the same id, by its successor.

Only the leader runs the relay (see :mod:`cloud_hub.cluster.leadership`); it notices new and removed
webhooks at once when its own API changed them, and within ``refresh_s`` otherwise, and it
looks for other processes' appends every ``poll_interval_s``. Retention: events older than
``retention_days`` that every active webhook has passed are deleted, hourly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.events.log import DURABLE_KINDS, EventLog, EventLogSettings, wait_for
from cloud_hub.events.webhook_models import WebhookRow
from cloud_hub.events.webhooks import DeliveryOutcome, WebhookDispatcher
from cloud_hub.registry import Registry, utcnow

__all__ = ["PRUNE_INTERVAL_S", "WebhookRelay", "delivery_id"]

log = structlog.get_logger(__name__)

#: seconds between two retention passes
PRUNE_INTERVAL_S = 3600.0
#: events read per query
READ_BATCH = 100
_RETRY_MAX_S = 30.0
_NAMESPACE = uuid.UUID("5d0c6a4e-2f51-4c3e-9a57-8b1f3c2d7e90")


def delivery_id(webhook_id: str, event_key: str) -> str:
    """``X-Hub-Delivery`` of a logged event for a webhook: stable, 32 hex digits."""
    return uuid.uuid5(_NAMESPACE, f"{webhook_id}/{event_key}").hex


def _durable_kinds(row: WebhookRow) -> frozenset[str]:
    return DURABLE_KINDS & frozenset(row.kinds) if row.kinds else DURABLE_KINDS


class WebhookRelay:
    """Delivers the event log to the webhooks while ``run()`` runs (on the leader only)."""

    def __init__(
        self,
        dispatcher: WebhookDispatcher,
        event_log: EventLog,
        registry: Registry,
        settings: EventLogSettings | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.dispatcher = dispatcher
        self.event_log = event_log
        self.settings = settings if settings is not None else event_log.settings
        self._session = registry.session
        self._clock = clock

    async def run(self) -> None:
        """Keep one delivery task per active webhook, and prune, until cancelled."""
        changed = asyncio.Event()
        self.dispatcher.on_change.append(changed.set)
        workers: dict[str, asyncio.Task[None]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._prune_periodically(), name="event-log-prune")
                while True:
                    changed.clear()
                    try:
                        rows = {row.webhook_id: row for row in await self._webhooks()}
                    except SQLAlchemyError as exc:
                        log.warning("webhook relay cannot read webhooks", error=str(exc))
                    else:
                        for webhook_id, row in rows.items():
                            if webhook_id not in workers and _durable_kinds(row):
                                workers[webhook_id] = group.create_task(
                                    self._follow(row), name=f"webhook-relay-{webhook_id}"
                                )
                        for webhook_id in [w for w in workers if w not in rows]:
                            workers.pop(webhook_id).cancel()
                    await wait_for(changed, self.dispatcher.settings.refresh_s)
        finally:
            self.dispatcher.on_change.remove(changed.set)

    async def _webhooks(self) -> list[WebhookRow]:
        async with self._session() as db:
            query = select(WebhookRow).where(WebhookRow.active.is_(True))
            return list((await db.scalars(query.execution_options(populate_existing=True))).all())

    async def _follow(self, row: WebhookRow) -> None:
        """Deliver the log to one webhook from its cursor on, until cancelled."""
        cursor, kinds, failures = row.event_cursor, _durable_kinds(row), 0
        while True:
            signal = self.event_log.signal()  # before reading: no local append slips by
            try:
                events, scanned = await self.event_log.read(cursor, kinds, READ_BATCH)
            except SQLAlchemyError as exc:
                failures += 1
                delay = min(_RETRY_MAX_S, 0.5 * 2 ** (failures - 1))
                log.warning("webhook relay cannot read the event log", error=str(exc))
                await asyncio.sleep(delay)
                continue
            failures, unsure = 0, False
            for logged in events:
                try:
                    wanted = await self.dispatcher.wants(row, logged.event)
                except SQLAlchemyError as exc:  # which site it is of: asked again shortly
                    log.warning("webhook relay cannot read the sites", error=str(exc))
                    unsure = True
                    break
                if not wanted:
                    continue  # another site's: the cursor moves past it below
                try:
                    outcome = await self.dispatcher.deliver(
                        row, logged.event, delivery_id(row.webhook_id, logged.key)
                    )
                except Exception:  # a bug must not stop this webhook, nor the relay
                    log.exception("webhook delivery crashed", webhook_id=row.webhook_id)
                    outcome = DeliveryOutcome(False, 1, None, "crashed")
                self.dispatcher.record(row.webhook_id, outcome)
                cursor = await self._save(row.webhook_id, logged.seq)
            if unsure:
                await asyncio.sleep(self.settings.poll_interval_s)
                continue
            if scanned > cursor:  # nothing of this webhook's kinds (and site) up to there
                cursor = await self._save(row.webhook_id, scanned)
            if not events:
                await wait_for(signal, self.settings.poll_interval_s)

    async def _save(self, webhook_id: str, seq: int) -> int:
        """Persist the cursor (never backwards); a failure is logged and retried next time."""
        try:
            async with self._session.begin() as db:
                await db.execute(
                    update(WebhookRow)
                    .where(WebhookRow.webhook_id == webhook_id, WebhookRow.event_cursor < seq)
                    .values(event_cursor=seq)
                )
        except SQLAlchemyError as exc:
            log.warning("webhook cursor not saved", webhook_id=webhook_id, seq=seq, error=str(exc))
        return seq

    # -- retention --------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete events older than the retention that every active webhook has passed."""
        rows = await self._webhooks()
        cursors = [row.event_cursor for row in rows if _durable_kinds(row)]
        up_to = min(cursors) if cursors else await self.event_log.head()
        before = self._clock() - timedelta(days=self.settings.retention_days)
        return await self.event_log.prune(before, up_to)

    async def _prune_periodically(self) -> None:
        while True:
            try:
                await self.prune()
            except SQLAlchemyError as exc:
                log.warning("event log not pruned", error=str(exc))
            await asyncio.sleep(PRUNE_INTERVAL_S)
