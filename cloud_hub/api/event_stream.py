"""One server-sent events stream: the durable event log and the local bus, merged.

Used by ``GET /api/v1/events/stream`` (:mod:`cloud_hub.api.routes_events`, which documents
what a client sees). Logged events (status, alarm, command) are read from the event log after a
cursor, so they carry their seq as the SSE ``id`` and a stream can resume; telemetry comes from
this process's bus and carries no id. A stream for a site-scoped key carries only the events
of its site (:class:`~cloud_hub.sites.SiteDirectory` says which site an event is of).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.events.bus import EventBus, HubEvent, Subscription
from cloud_hub.events.log import DURABLE_KINDS, EventLog
from cloud_hub.sites import SiteDirectory

__all__ = ["LOG_POLL_S", "MAX_BATCH", "STREAM_QUEUE", "EventStream", "format_event"]

#: telemetry events waiting per stream before the oldest are dropped
STREAM_QUEUE = 1000
#: most events sent in one write when many are waiting
MAX_BATCH = 100
#: how often a stream looks for events other hub processes appended to the log
LOG_POLL_S = 1.0


def format_event(event: HubEvent, event_id: int | None) -> str:
    """One SSE message (``data`` is one line of JSON, so it needs no splitting)."""
    document = {
        "kind": event.kind,
        "ts_ms": event.ts_ms,
        "device_id": event.device_id,
        "agent_id": event.agent_id,
        "data": event.data,
    }
    data = json.dumps(document, separators=(",", ":"), default=str)
    id_line = f"id: {event_id}\n" if event_id is not None else ""
    return f"event: {event.kind}\n{id_line}data: {data}\n\n"


class EventStream:
    def __init__(
        self,
        bus: EventBus,
        event_log: EventLog,
        kinds: frozenset[str],
        resume: int | None,
        heartbeat_s: float,
        matches: Callable[[HubEvent], bool],
        sites: SiteDirectory,
        site: str | None,
    ) -> None:
        self.bus = bus
        self.event_log = event_log
        self.logged_kinds = sorted(kinds & DURABLE_KINDS)
        self.telemetry = "telemetry" in kinds
        self.cursor = resume
        self.heartbeat_s = heartbeat_s
        self.matches = matches
        self.sites = sites
        #: only this site's events (None: every site's)
        self.site = site
        self._subscription: Subscription | None = None
        self._getter: asyncio.Future[HubEvent] | None = None
        self._reported = 0
        self._log_down = False

    async def messages(self) -> AsyncIterator[str]:
        """The stream's text, until the client goes (Starlette cancels the generator)."""
        # subscribed here, not in the handler: the subscription exists exactly as long as the
        # response streams
        if self.telemetry:
            self._subscription = self.bus.subscribe(
                lambda e: e.kind == "telemetry" and self.matches(e), STREAM_QUEUE
            )
        try:
            if self.cursor is None and self.logged_kinds:
                self.cursor = await self._head()
            yield "retry: 3000\n\n"  # also sends the headers at once
            quiet_s = 0.0
            while True:
                signal = self.event_log.signal()  # before reading: no local append slips by
                chunk = await self._from_log() + await self._from_bus()
                if chunk:
                    quiet_s = 0.0
                    yield "".join(chunk)
                    continue
                quiet_s += await self._wait(signal, quiet_s)
                if quiet_s >= self.heartbeat_s:
                    quiet_s = 0.0
                    yield ": keepalive\n\n"
        finally:
            if self._getter is not None:
                self._getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._getter
            if self._subscription is not None:
                self.bus.unsubscribe(self._subscription)

    async def _head(self) -> int | None:
        try:
            return await self.event_log.head()
        except (SQLAlchemyError, OSError):
            return None  # no cursor yet: the stream starts once the log can be read

    async def _from_log(self) -> list[str]:
        if not self.logged_kinds:
            return []
        if self.cursor is None:
            self.cursor = await self._head()
            if self.cursor is None:
                return self._unavailable("no head")
        try:
            events, scanned = await self.event_log.read(self.cursor, self.logged_kinds, MAX_BATCH)
            wanted = [e for e in events if self.matches(e.event) and await self._ours(e.event)]
        except (SQLAlchemyError, OSError) as exc:
            return self._unavailable(type(exc).__name__)
        self._log_down = False
        self.cursor = max(self.cursor, scanned)
        return [format_event(e.event, e.seq) for e in wanted]

    async def _ours(self, event: HubEvent) -> bool:
        return await self.sites.event_in(event, self.site)

    def _unavailable(self, why: str) -> list[str]:
        if self._log_down:
            return []
        self._log_down = True
        return [f": event log unavailable ({why})\n\n"]

    async def _from_bus(self) -> list[str]:
        subscription = self._subscription
        if subscription is None:
            return []
        taken: list[HubEvent] = []
        if self._getter is not None and self._getter.done():
            taken.append(self._getter.result())
            self._getter = None
        queue = subscription.queue
        while self._getter is None and not queue.empty() and len(taken) < MAX_BATCH:
            taken.append(queue.get_nowait())
        try:
            chunk = [format_event(e, None) for e in taken if await self._ours(e)]
        except (SQLAlchemyError, OSError) as exc:  # best effort, as readings are here
            chunk = [f": dropped {len(taken)} (sites unavailable: {type(exc).__name__})\n\n"]
        if subscription.dropped > self._reported:
            chunk.insert(0, f": dropped {subscription.dropped - self._reported}\n\n")
            self._reported = subscription.dropped
        return chunk

    async def _wait(self, signal: asyncio.Event, quiet_s: float) -> float:
        """Sleep until a local append, a reading, the next log poll or the heartbeat is due;
        how long it slept."""
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(signal.wait())}
        if self._subscription is not None:
            if self._getter is None:
                self._getter = asyncio.ensure_future(self._subscription.queue.get())
            waiters.add(self._getter)
        timeout = self.heartbeat_s - quiet_s
        if self.logged_kinds:
            timeout = min(timeout, LOG_POLL_S)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            if waiter is not self._getter:
                waiter.cancel()
        return loop.time() - started
