"""What waits to go up: telemetry readings (batched) and control messages (results, events).

Items leave the outbox only when :meth:`Outbox.ack` confirms the broker's PUBACK, so a
publish interrupted by a broken link is sent again after reconnecting. (The on-disk outbox
also keeps a telemetry batch after the PUBACK, :meth:`~edge_agent.outbox.spool.DiskOutbox.sent`,
until the hub says it stored it, :meth:`~edge_agent.outbox.spool.DiskOutbox.stored`.) Control messages are
never dropped; when the reading limit is reached the oldest readings are dropped and counted.

This in-memory outbox keeps nothing across a process restart: the agent uses the on-disk
:class:`edge_agent.outbox.spool.DiskOutbox` behind the same interface (:class:`OutboxLike`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel

from device_profiles.wire import Channel, Reading, TelemetryBatch

__all__ = ["Outbox", "OutboxLike", "Outgoing", "gather_burst"]


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: a telemetry batch or a control message."""

    channel: Channel
    message: BaseModel
    readings: int = 0


class OutboxLike(Protocol):
    """What the pollers, the command executor and the uplink need of an outbox; the agent
    uses the on-disk :class:`edge_agent.outbox.spool.DiskOutbox`, tests may use :class:`Outbox`."""

    @property
    def agent_id(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def dropped_readings(self) -> int: ...
    def put_reading(self, reading: Reading) -> None: ...
    def put_control(self, channel: Channel, message: BaseModel) -> None: ...
    @property
    def unconfirmed_batches(self) -> int: ...
    @property
    def resent_batches(self) -> int: ...
    async def next(self) -> Outgoing: ...
    def ack(self, item: Outgoing) -> None: ...
    def sent(self, item: Outgoing) -> None: ...
    def stored(self, seqs: Iterable[int]) -> int: ...
    def rewind(self) -> None: ...


async def gather_burst(
    changed: asyncio.Event,
    delay_s: float,
    *,
    full: Callable[[], bool],
    after_wake: Callable[[], None] | None = None,
) -> None:
    """Let a burst of readings gather into one message, but never wait past ``delay_s``: wait
    on ``changed`` until ``full()`` (calling ``after_wake`` after each wake-up) or time is up."""
    deadline = time.monotonic() + delay_s
    while not full():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        changed.clear()
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancellation that
            # arrives as the event is set, and the stop then never reaches the task
            async with asyncio.timeout(remaining):
                await changed.wait()
        except TimeoutError:
            return
        if after_wake is not None:
            after_wake()


@dataclass
class Outbox:
    agent_id: str
    max_readings: int = 100_000
    batch_max_readings: int = 500
    batch_max_delay_s: float = 0.2
    dropped_readings: int = 0
    _readings: deque[Reading] = field(default_factory=deque)
    _control: deque[Outgoing] = field(default_factory=deque)
    _inflight: Outgoing | None = None
    _next_seq: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def put_reading(self, reading: Reading) -> None:
        if len(self._readings) >= self.max_readings:
            self._readings.popleft()
            self.dropped_readings += 1
        self._readings.append(reading)
        self._changed.set()

    def put_control(self, channel: Channel, message: BaseModel) -> None:
        self._control.append(Outgoing(channel, message))
        self._changed.set()

    @property
    def depth(self) -> int:
        """Readings waiting (including those in the message being published)."""
        return len(self._readings) + (self._inflight.readings if self._inflight else 0)

    async def next(self) -> Outgoing:
        """The next message to publish; the same one again until it is acknowledged."""
        if self._inflight is not None:
            return self._inflight
        while not self._control and not self._readings:
            self._changed.clear()
            await self._changed.wait()
        if self._control:
            self._inflight = self._control.popleft()
            return self._inflight
        await gather_burst(
            self._changed,
            self.batch_max_delay_s,
            full=lambda: len(self._readings) >= self.batch_max_readings or bool(self._control),
        )
        count = min(len(self._readings), self.batch_max_readings)
        readings = [self._readings.popleft() for _ in range(count)]
        batch = TelemetryBatch(agent_id=self.agent_id, seq=self._next_seq, readings=readings)
        self._next_seq += 1
        self._inflight = Outgoing(Channel.TELEMETRY, batch, readings=count)
        return self._inflight

    def ack(self, item: Outgoing) -> None:
        """The broker has the message: forget it."""
        if self._inflight is item:
            self._inflight = None

    # Kept in memory only, this outbox cannot wait for the hub's stored acknowledgements: a
    # batch the broker has is forgotten (sent() is ack()), as a process restart would anyway.
    unconfirmed_batches = 0
    resent_batches = 0

    def sent(self, item: Outgoing) -> None:
        self.ack(item)

    def stored(self, seqs: Iterable[int]) -> int:
        return 0

    def rewind(self) -> None:
        pass
