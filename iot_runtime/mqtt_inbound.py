"""Received MQTT messages: a queue that never discards, and the watermarks of back-pressure.

aiomqtt puts every received message in an ``asyncio.Queue``; bounded, it discards what does
not fit with only a warning ("Message queue is full. Discarding message."), and a message
received with manual acknowledgements that is discarded is never acknowledged: the broker
keeps it in its in-flight window until the next reconnect. :class:`iot_runtime.mqtt.Client`
uses an unbounded :class:`InboundQueue` instead and, given an :class:`InboundWindow`, stops
reading the socket while the queue holds ``high`` messages or more, until the consumer has
taken it down to ``low``: the broker then holds the backlog (TCP back-pressure) and sends at
the consumer's pace.

With a ``key`` (e.g. the agent a topic belongs to) the queue is fair: it keeps one FIFO per
key and hands out one message of each key in turn, so a key with a long backlog does not delay
the messages of the others (round robin; the order within a key is kept).

Errors: :class:`InboundOverflow` (an ``aiomqtt.MqttError``) ends the session when the queue
reached its hard ``cap`` anyway; reconnecting makes the broker redeliver what was not
acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BufferedReads",
    "InboundOverflow",
    "InboundQueue",
    "InboundStats",
    "InboundWindow",
    "MessageKey",
    "agent_of_topic",
]

#: what a fair queue groups received messages by, from their topic
MessageKey = Callable[[str], str]


def agent_of_topic(topic: str) -> str:
    """The agent id of a contract topic (``iot/v1/<agent_id>/...``), or ``""`` for others."""
    parts = topic.split("/", 3)
    return parts[2] if len(parts) > 3 and parts[0] == "iot" and parts[1] == "v1" else ""


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
    #: messages the admission check refused (acknowledged to the broker, never queued)
    shed: int = 0

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


class BufferedReads:
    """A socket whose reads are buffered: one ``recv`` of up to 64 KiB serves many packets.

    paho reads a packet with three or more ``recv`` calls (its type, its length byte by byte,
    its body), each a system call; behind a flood that is most of the cost of a message. Put in
    place of paho's socket, this serves those reads from what one large ``recv`` returned, and
    its ``pending()`` (what is buffered, plus what an SSL socket has decoded) lets the reader
    go on to the next packet without waiting for the event loop. Everything else is the
    socket's."""

    __slots__ = ("_buffer", "_pos", "_sock")

    CHUNK = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buffer = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buffer):
            data: bytes = self._sock.recv(max(size, self.CHUNK))  # raises if nothing is there
            if len(data) <= size:
                return data
            self._buffer, self._pos = data, 0
        end = min(self._pos + size, len(self._buffer))
        chunk = self._buffer[self._pos : end]
        self._pos = end
        if end == len(self._buffer):
            self._buffer, self._pos = b"", 0  # let the chunk go
        return chunk

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buffer) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _FairBuffer:
    """The container of a fair :class:`InboundQueue`: one FIFO per key, served in turn.

    It has what ``asyncio.Queue`` uses of its ``deque`` (``append``, ``popleft``, ``len``)."""

    __slots__ = ("_key", "_lanes", "_size")

    def __init__(self, key: MessageKey) -> None:
        self._key = key
        #: key -> its messages; a key's lane is moved to the end once served (round robin)
        self._lanes: dict[str, deque[aiomqtt.Message]] = {}
        self._size = 0

    def append(self, message: aiomqtt.Message) -> None:
        key = self._key(message.topic.value)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(message)
        self._size += 1

    def popleft(self) -> aiomqtt.Message:
        key = next(iter(self._lanes))  # IndexError-free: only called when not empty
        lane = self._lanes.pop(key)
        message = lane.popleft()
        if lane:
            self._lanes[key] = lane  # to the back of the round
        self._size -= 1
        return message

    def clear(self) -> None:
        self._lanes.clear()
        self._size = 0

    def lanes(self) -> int:
        return len(self._lanes)

    def __iter__(self) -> Iterator[aiomqtt.Message]:  # asyncio.Queue's repr lists its items
        for lane in self._lanes.values():
            yield from lane

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0


class InboundQueue(asyncio.Queue[aiomqtt.Message]):
    """An unbounded queue that calls ``on_taken`` after each message taken, and raises the
    error it was failed with (:meth:`fail`) instead of handing out more messages. With a
    ``key`` it is fair between keys (see the module docstring)."""

    def __init__(self, on_taken: Callable[[], None], key: MessageKey | None = None) -> None:
        super().__init__()
        if key is not None:
            self._queue: deque[aiomqtt.Message] | _FairBuffer = _FairBuffer(key)
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
