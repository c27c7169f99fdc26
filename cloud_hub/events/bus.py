"""The hub's in-process event bus: telemetry, status, alarm and command events.

Producers (ingest, command dispatch, the alarm engine) ``publish`` without waiting; consumers
(the alarm engine, the server-sent events stream, webhooks) ``subscribe`` with a filter and
read events from a bounded queue. A consumer that falls behind loses its oldest events, counted
in its ``dropped``; it never slows ingest down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EventBus", "EventKind", "HubEvent", "Subscription"]

EventKind = Literal["telemetry", "status", "alarm", "command"]


@dataclass(frozen=True, slots=True)
class HubEvent:
    kind: EventKind
    ts_ms: int
    data: dict[str, Any]
    device_id: str | None = None
    agent_id: str | None = None
    #: the fact's identity in the durable event log, when the producer knows it better than
    #: :func:`cloud_hub.events.log.event_key` derives it from the other fields
    key: str | None = None


@dataclass
class Subscription:
    accepts: Callable[[HubEvent], bool]
    queue: asyncio.Queue[HubEvent]
    dropped: int = 0

    def offer(self, event: HubEvent) -> None:
        if self.accepts(event):
            self.put(event)

    def put(self, event: HubEvent) -> None:
        """Queue an event whatever the filter says (for a consumer's own sources), dropping
        the oldest waiting one when the queue is full."""
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[HubEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[HubEvent]:
        while True:
            yield await self.queue.get()


@dataclass
class EventBus:
    max_queue: int = 10_000
    _subscriptions: list[Subscription] = field(default_factory=list)

    def publish(self, event: HubEvent) -> None:
        for subscription in self._subscriptions:
            subscription.offer(event)

    def subscribe(
        self, accepts: Callable[[HubEvent], bool] = lambda _: True, max_queue: int | None = None
    ) -> Subscription:
        subscription = Subscription(accepts, asyncio.Queue(max_queue or self.max_queue))
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
