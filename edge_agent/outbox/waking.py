"""An outbox that says when urgent control messages wait: what ends an NB-IoT sleep early."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from device_profiles.wire import Channel, Reading
from edge_agent.outbox.memory import OutboxLike, Outgoing

__all__ = ["URGENT_CHANNELS", "WakingOutbox"]

#: Control messages that end the PSM sleep early (health waits for the next wake).
URGENT_CHANNELS = frozenset({Channel.EVENTS, Channel.COMMAND_RESULTS, Channel.CONFIG_REPORTED})


class WakingOutbox:
    """An :class:`~edge_agent.outbox.memory.OutboxLike` around another whose :attr:`urgent` is set
    while control messages of an urgent channel wait to be sent (to end the PSM sleep early,
    and not to wake again for what the last cycle already sent). Everything else (``close``,
    ``bytes_used``) is the wrapped outbox's."""

    def __init__(
        self, inner: OutboxLike, urgent_channels: frozenset[Channel] = URGENT_CHANNELS
    ) -> None:
        self.inner = inner
        self.urgent_channels = urgent_channels
        self.urgent = asyncio.Event()
        self._urgent_waiting = 0

    @property
    def agent_id(self) -> str:
        return self.inner.agent_id

    @property
    def depth(self) -> int:
        return self.inner.depth

    @property
    def dropped_readings(self) -> int:
        return self.inner.dropped_readings

    def put_reading(self, reading: Reading) -> None:
        self.inner.put_reading(reading)

    def put_control(self, channel: Channel, message: BaseModel) -> None:
        self.inner.put_control(channel, message)
        if channel in self.urgent_channels:
            self._urgent_waiting += 1
            self.urgent.set()

    async def next(self) -> Outgoing:
        return await self.inner.next()

    @property
    def unconfirmed_batches(self) -> int:
        return self.inner.unconfirmed_batches

    @property
    def resent_batches(self) -> int:
        return self.inner.resent_batches

    def stored(self, seqs: Iterable[int]) -> int:
        return self.inner.stored(seqs)

    def rewind(self) -> None:
        self.inner.rewind()

    def sent(self, item: Outgoing) -> None:
        self.inner.sent(item)
        self._sent(item)

    def ack(self, item: Outgoing) -> None:
        self.inner.ack(item)
        self._sent(item)

    def _sent(self, item: Outgoing) -> None:
        if item.channel in self.urgent_channels and self._urgent_waiting > 0:
            self._urgent_waiting -= 1
            if self._urgent_waiting == 0:
                self.urgent.clear()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
