"""The inbound queue's pieces: watermark validation, the get hook, the failure it raises."""

from __future__ import annotations

import socket

import aiomqtt
import pydantic
import pytest

from iot_runtime.mqtt import MqttSettings, make_client
from iot_runtime.mqtt_inbound import (
    BufferedReads,
    InboundOverflow,
    InboundQueue,
    InboundWindow,
    agent_of_topic,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("high", "low", "cap"), [(10, 10, 20), (10, 11, 20), (10, 5, 9)])
def test_watermarks_must_be_ordered(high: int, low: int, cap: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="low < high <= cap"):
        InboundWindow(high=high, low=low, cap=cap)


async def test_a_window_needs_manual_acknowledgements() -> None:
    with pytest.raises(ValueError, match="manual_ack"):
        make_client(MqttSettings(), "x", persistent_session=True, inbound=InboundWindow())


async def test_the_queue_is_unbounded_calls_back_on_get_and_raises_its_failure() -> None:
    taken: list[int] = []
    queue = InboundQueue(lambda: taken.append(queue.qsize()))
    message = aiomqtt.Message("t", b"", 1, False, 1, None)
    for _ in range(20_000):  # past aiomqtt's old 10,000: nothing refused
        queue.put_nowait(message)
    assert await queue.get() is message
    assert queue.get_nowait() is message
    assert taken == [19_999, 19_998]
    queue.fail(InboundOverflow(19_998, 19_998))
    with pytest.raises(InboundOverflow):
        await queue.get()
    queue.reset()
    assert queue.get_nowait() is message


def _message(topic: str, n: int) -> aiomqtt.Message:
    return aiomqtt.Message(topic, str(n).encode(), 1, False, n + 1, None)


async def test_a_fair_queue_serves_each_agent_in_turn_keeping_each_agents_order() -> None:
    queue = InboundQueue(lambda: None, key=agent_of_topic)
    for n in range(1000):  # a flood queued first...
        queue.put_nowait(_message("iot/v1/flood/telemetry", n))
    for n in range(3):  # ... then a well-behaved agent and a stray topic
        queue.put_nowait(_message("iot/v1/good/telemetry", n))
    queue.put_nowait(_message("elsewhere/x", 0))
    assert queue.qsize() == 1004
    assert "maxsize=0" in repr(queue)  # asyncio's repr lists the items: the lanes iterate
    first = [await queue.get() for _ in range(8)]
    got = [
        (m.topic.value.split("/")[-2] if m.topic.value.startswith("iot") else "", m.payload)
        for m in first
    ]
    assert got == [
        ("flood", b"0"),
        ("good", b"0"),
        ("", b"0"),
        ("flood", b"1"),
        ("good", b"1"),
        ("flood", b"2"),
        ("good", b"2"),
        ("flood", b"3"),
    ]
    rest = [queue.get_nowait().payload for _ in range(queue.qsize())]
    assert rest == [str(n).encode() for n in range(4, 1000)]
    assert queue.empty()


@pytest.mark.parametrize(
    ("topic", "agent"),
    [
        ("iot/v1/a-1/telemetry", "a-1"),
        ("iot/v1/a-1/cmd/x", "a-1"),
        ("iot/v1/a-1", ""),
        ("iot/v2/a-1/telemetry", ""),
        ("other/v1/a/telemetry", ""),
        ("", ""),
    ],
)
def test_the_agent_of_a_topic(topic: str, agent: str) -> None:
    assert agent_of_topic(topic) == agent


def test_buffered_reads_serve_many_small_reads_from_one_recv() -> None:
    left, right = socket.socketpair()
    try:
        right.setblocking(False)
        reads = BufferedReads(right)
        left.sendall(b"\x30\x05hello" * 3)
        assert reads.recv(1) == b"\x30"  # one recv took all 21 bytes
        assert reads.pending() == 20
        assert reads.recv(1) == b"\x05" and reads.recv(5) == b"hello"
        assert reads.recv(100) == b"\x30\x05hello" * 2  # what is left, short of the ask
        assert reads.pending() == 0
        with pytest.raises(BlockingIOError):  # nothing buffered, nothing in the socket
            reads.recv(1)
        assert reads.fileno() == right.fileno()  # the rest is the socket's
        left.close()
        assert reads.recv(1) == b""  # the peer closed
    finally:
        right.close()
