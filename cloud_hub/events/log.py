"""The durable event log (``hub_events``): status, alarm and command events, stored once.

This is the transactional-outbox pattern for webhooks. Every hub process appends the
non-telemetry events of its in-process bus; the leader's webhook relay
(:mod:`cloud_hub.events.relay`) reads the log in ``seq`` order and delivers. So an event is
delivered even when the process that saw it is not the one delivering, after a restart, and
after a failover.

**Once per fact.** Each event has a deterministic ``event_key`` (:func:`event_key`): an agent
state seen by two processes (each control session sees every agent message), or a command
result applied by both, is the same key, and ``INSERT ... ON CONFLICT (event_key) DO NOTHING``
stores it once.

**Off the hot path.** Producers only ``publish`` on the bus; this log's bounded subscription
queues the events and :meth:`EventLog.run` appends them in batches. When the database is
away the batch is retried with backoff and new events wait in the queue; when the queue is
full the oldest are dropped and counted (``stats["dropped"]``). :meth:`EventLog.close`
flushes what is left.

**No event overtaken.** A PostgreSQL sequence hands out numbers at ``INSERT`` time but
transactions commit in any order, so a reader could see seq 12 before seq 11 commits, move
its cursor past 11 and never deliver it. Appends therefore take a transaction-scoped advisory
lock (``pg_advisory_xact_lock``) before inserting: appends from all processes are serialised,
a seq is taken only after every earlier append has committed, and the committed rows are
always every row up to some seq minus permanent gaps (numbers burnt by ``ON CONFLICT`` or
rolled-back transactions, which never appear later). A reader can then skip gaps at once,
with no settle window or wait at a gap. SQLite serialises writers by itself. Appends are
batched, so the lock costs one short critical section per batch, not per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.events.bus import EventBus, HubEvent, Subscription
from cloud_hub.events.log_models import HubEventRow
from cloud_hub.registry import Registry, utcnow

__all__ = [
    "DURABLE_KINDS",
    "EventLog",
    "EventLogSettings",
    "LoggedEvent",
    "event_key",
    "wait_for",
]

log = structlog.get_logger(__name__)

#: the event kinds the log keeps (telemetry is far too much, and is not singular per fact)
DURABLE_KINDS = frozenset({"status", "alarm", "command"})
#: ``pg_advisory_xact_lock`` key serialising appends ("hub_events" in ASCII, truncated)
_APPEND_LOCK = 0x6875625F6576656E
_RETRY_MAX_S = 30.0


class EventLogSettings(BaseModel):
    """How events are appended to and kept in the durable event log."""

    model_config = ConfigDict(extra="forbid")

    queue_size: int = Field(
        default=10_000, ge=1, description="Events waiting to be appended before the oldest drop."
    )
    batch_max: int = Field(default=500, ge=1, le=2000, description="Events per append.")
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the leader looks for events appended by other processes.",
    )
    retention_days: float = Field(
        default=7.0, gt=0, description="Events older than this that every webhook passed go."
    )
    append_timeout_s: float = Field(default=10.0, gt=0, description="Per append transaction.")


def event_key(event: HubEvent) -> str:
    """The identity of the fact an event reports, the same in every process that sees it.

    status ``status:{scope}:{agent}:{device|-}:{state}:{ts}``, command
    ``command:{command_id}:{status}``, alarm ``alarm:{alarm_id}:{transition}``; a producer
    that knows better sets ``HubEvent.key`` (ingest does, for an agent's Last Will, which
    carries no time). Raises ValueError for an event that cannot be keyed.
    """
    if event.key is not None:
        return event.key
    data = event.data
    try:
        if event.kind == "status":
            device = event.device_id or "-"
            return f"status:{data['scope']}:{event.agent_id}:{device}:{data['state']}:{event.ts_ms}"
        if event.kind == "command":
            return f"command:{data['command_id']}:{data['status']}"
        if event.kind == "alarm":
            return f"alarm:{data['alarm_id']}:{data['transition']}"
    except KeyError as exc:
        raise ValueError(f"{event.kind} event without {exc.args[0]!r}") from exc
    raise ValueError(f"{event.kind} events are not logged")


@dataclass(frozen=True)
class LoggedEvent:
    """One row of the log: its place, its key and the event as it was published."""

    seq: int
    key: str
    event: HubEvent


def _row(event: HubEvent, key: str) -> dict[str, Any]:
    # through JSON once: the column must hold exactly what a reader will get back
    data = json.loads(json.dumps(event.data, default=str))
    return {
        "event_key": key,
        "kind": event.kind,
        "ts_ms": event.ts_ms,
        "agent_id": event.agent_id,
        "device_id": event.device_id,
        "data": data,
        "created_at": utcnow(),
    }


class EventLog:
    """Appends the bus's durable events to ``hub_events`` and reads them back in order.

    ``start()`` subscribes to the bus; ``run()`` appends until cancelled; ``close()``
    unsubscribes and flushes. ``append()`` writes events directly (tests, the flush).
    ``read()``, ``head()`` and ``prune()`` are the relay's side.
    """

    def __init__(
        self, registry: Registry, bus: EventBus, settings: EventLogSettings | None = None
    ) -> None:
        self.bus = bus
        self.settings = settings if settings is not None else EventLogSettings()
        self.stats: Counter[str] = Counter()
        self._session = registry.session
        self._postgres = registry.engine.dialect.name == "postgresql"
        self._subscription: Subscription | None = None
        self._batch: list[HubEvent] = []  # taken from the queue, not yet committed
        self._appended = asyncio.Event()

    # -- appending --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = self.bus.subscribe(
                lambda event: event.kind in DURABLE_KINDS, self.settings.queue_size
            )

    async def run(self) -> None:
        """Append queued events in batches until cancelled, retrying a failing database."""
        if self._subscription is None:
            await self.start()
        assert self._subscription is not None
        queue = self._subscription.queue
        failures = 0
        while True:
            if not self._batch:
                self._batch.append(await queue.get())
            while not queue.empty() and len(self._batch) < self.settings.batch_max:
                self._batch.append(queue.get_nowait())
            try:
                async with asyncio.timeout(self.settings.append_timeout_s):
                    await self.append(self._batch)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                failures += 1
                self.stats["errors"] += 1
                delay = min(_RETRY_MAX_S, 0.5 * 2 ** (failures - 1))
                (log.warning if failures == 1 else log.debug)(
                    "event log append failed, retrying",
                    events=len(self._batch),
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._batch = []

    async def append(self, events: Sequence[HubEvent]) -> int:
        """Store events whose key is new, in order, in one transaction: how many were new."""
        rows: dict[str, dict[str, Any]] = {}
        for event in events:
            try:
                key = event_key(event)
            except ValueError as exc:
                self.stats["unkeyed"] += 1
                log.error("event not logged", kind=event.kind, error=str(exc))
                continue
            rows.setdefault(key, _row(event, key))  # dict: insertion order, first one wins
        if not rows:
            return 0
        insert = pg_insert if self._postgres else sqlite_insert
        statement = (
            insert(HubEventRow)
            .values(list(rows.values()))  # one multi-row INSERT: seqs in this order
            .on_conflict_do_nothing(index_elements=["event_key"])
            .returning(HubEventRow.seq)
        )
        async with self._session.begin() as db:
            if self._postgres:  # see the module docstring: no seq may overtake another
                await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
            added = len((await db.execute(statement)).all())
        self.stats["appended"] += added
        self.stats["duplicates"] += len(rows) - added
        self._appended.set()  # wake local readers; the next appends get a fresh event
        self._appended = asyncio.Event()
        return added

    async def close(self) -> None:
        """Unsubscribe and append whatever is still waiting (given up after a timeout)."""
        if self._subscription is None:
            return
        subscription, self._subscription = self._subscription, None
        self.bus.unsubscribe(subscription)
        self.stats["dropped"] += subscription.dropped
        pending = list(self._batch)
        while not subscription.queue.empty():
            pending.append(subscription.queue.get_nowait())
        self._batch = []
        if not pending:
            return
        try:
            async with asyncio.timeout(self.settings.append_timeout_s):
                for start in range(0, len(pending), self.settings.batch_max):
                    await self.append(pending[start : start + self.settings.batch_max])
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("event log not flushed: events lost", events=len(pending), error=str(exc))

    @property
    def dropped(self) -> int:
        """Events lost because the append queue was full."""
        live = self._subscription.dropped if self._subscription is not None else 0
        return self.stats["dropped"] + live

    # -- reading ----------------------------------------------------------------------------

    def signal(self) -> asyncio.Event:
        """An event set by the next local append: take it *before* reading, then wait on it."""
        return self._appended

    async def head(self) -> int:
        """The highest seq in the log (0 if empty)."""
        async with self._session() as db:
            return int(await db.scalar(select(func.max(HubEventRow.seq))) or 0)

    async def read(
        self, after: int, kinds: Collection[str] = (), limit: int = 100
    ) -> tuple[list[LoggedEvent], int]:
        """Events after seq ``after`` (of ``kinds``; empty: all), oldest first, and the seq up
        to which the log was scanned: a cursor may move there once the events are done."""
        async with self._session() as db:
            head = int(await db.scalar(select(func.max(HubEventRow.seq))) or 0)
            if head <= after:
                return [], after
            query = select(HubEventRow).where(HubEventRow.seq > after, HubEventRow.seq <= head)
            if kinds:
                query = query.where(HubEventRow.kind.in_(list(kinds)))
            rows = list((await db.scalars(query.order_by(HubEventRow.seq).limit(limit))).all())
        scanned = rows[-1].seq if len(rows) == limit else head
        events = [
            LoggedEvent(
                row.seq,
                row.event_key,
                HubEvent(
                    kind=row.kind,  # type: ignore[arg-type]  # only durable kinds are stored
                    ts_ms=row.ts_ms,
                    data=row.data,
                    device_id=row.device_id,
                    agent_id=row.agent_id,
                    key=row.event_key,
                ),
            )
            for row in rows
        ]
        return events, scanned

    async def prune(self, before: datetime, up_to_seq: int) -> int:
        """Delete events created before ``before`` with a seq at most ``up_to_seq``."""
        async with self._session.begin() as db:
            result = await db.execute(
                delete(HubEventRow).where(
                    HubEventRow.created_at < before, HubEventRow.seq <= up_to_seq
                )
            )
        pruned = int(getattr(result, "rowcount", 0) or 0)
        if pruned:
            log.info("event log pruned", events=pruned, up_to_seq=up_to_seq)
        return pruned


async def wait_for(signal: asyncio.Event, timeout_s: float) -> None:
    """Wait until ``signal`` is set or ``timeout_s`` passed (whichever comes first)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await signal.wait()
