"""Received MQTT messages: a queue that never discards, and the watermarks of back-pressure.

aiomqtt puts every received message in an ``asyncio.Queue``; bounded, it discards what does
not fit with only a warning ("Message queue is full. Discarding message."), and a message
received with manual acknowledgements that is discarded is never acknowledged: the broker
keeps it in its in-flight window until the next reconnect. :class:`iot_runtime.mqtt.Client`
uses an unbounded :class:`InboundQueue` instead and, given an :class:`InboundWindow`, stops
reading the socket while the queue holds ``high`` messages or more, until the consumer has
taken it down to ``low``: the broker then holds the backlog (TCP back-pressure) and sends at
the consumer's pace.

Errors: :class:`InboundOverflow` (an ``aiomqtt.MqttError``) ends the session when the queue
reached its hard ``cap`` anyway; reconnecting makes the broker redeliver what was not
acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["InboundOverflow", "InboundQueue", "InboundStats", "InboundWindow"]


class InboundWindow(BaseModel):
    """Watermarks of a client's queue of received messages (see the module docstring).

    The queue can exceed ``high`` by one read pass of paho (a packet, plus one per outgoing
    QoS 1 message awaiting its PUBACK) when reading stops, while a subscribe or a QoS 1
    publish awaits its reply (reading goes on: the reply is behind the backlog), and by one
    read pass every ``keepalive / 2`` while paused (which keeps paho's keepalive fed).
    ``cap`` bounds all that: reaching it ends the session (:class:`InboundOverflow`).
    Only for clients with manual acknowledgements: a message is acknowledged only once
    taken, so one refused at the cap is redelivered after the reconnect.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    high: int = Field(default=5_000, ge=1, description="Stop reading at this many queued.")
    low: int = Field(default=1_000, ge=0, description="Read again once down to this many.")
    cap: int = Field(default=50_000, ge=1, description="Reconnect rather than queue more.")

    @model_validator(mode="after")
    def _ordered(self) -> InboundWindow:
        if not self.low < self.high <= self.cap:
            raise ValueError(f"need low < high <= cap, got {self.low}, {self.high}, {self.cap}")
        return self


@dataclass
class InboundStats:
    """Back-pressure counters, shared by the successive clients of one session."""

    #: times reading stopped at the high watermark
    pauses: int = 0
    #: time spent not reading, in finished pauses (see :meth:`paused_seconds`)
    paused_s: float = 0.0
    #: one-pass reads while paused, to keep the keepalive fed
    keepalive_reads: int = 0
    #: times the queue reached its cap (each ended the session)
    overflows: int = 0
    #: messages refused at the cap (left unacknowledged, redelivered after the reconnect)
    overflowed: int = 0
    #: messages queued now, and the most ever queued
    queued: int = 0
    peak: int = 0
    #: ``time.monotonic()`` when the current pause began
    paused_since: float | None = None

    def paused_seconds(self) -> float:
        """Time spent not reading, including the current pause."""
        ongoing = time.monotonic() - self.paused_since if self.paused_since is not None else 0.0
        return self.paused_s + ongoing


class InboundOverflow(aiomqtt.MqttError):
    """The queue of received messages reached its cap: the session must reconnect."""

    def __init__(self, queued: int, cap: int) -> None:
        super().__init__(
            f"{queued} received messages queued, the cap is {cap}: reconnecting so that the "
            "broker redelivers what was not acknowledged"
        )
        self.queued = queued
        self.cap = cap


class InboundQueue(asyncio.Queue[aiomqtt.Message]):
    """An unbounded queue that calls ``on_taken`` after each message taken, and raises the
    error it was failed with (:meth:`fail`) instead of handing out more messages."""

    def __init__(self, on_taken: Callable[[], None]) -> None:
        super().__init__()
        self._on_taken = on_taken
        self._failure: aiomqtt.MqttError | None = None

    def fail(self, error: aiomqtt.MqttError) -> None:
        """Make every later get raise ``error`` (the queue is not empty when this is called:
        no getter is waiting)."""
        self._failure = error

    def reset(self) -> None:
        self._failure = None

    def get_nowait(self) -> aiomqtt.Message:  # asyncio.Queue.get ends with get_nowait too
        if self._failure is not None:
            raise self._failure
        message = super().get_nowait()
        self._on_taken()
        return message
