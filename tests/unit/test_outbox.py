"""The in-memory outbox: batches readings, keeps a message until acked, drops oldest readings."""

from __future__ import annotations

import pytest

from device_profiles.wire import Channel, DeviceEvent, Reading, TelemetryBatch
from edge_agent.outbox.memory import Outbox

pytestmark = pytest.mark.unit


def _reading(i: int) -> Reading:
    return Reading(device_id="d1", ts=i, values={"power": float(i)})


async def test_readings_are_batched_with_growing_sequence_numbers() -> None:
    outbox = Outbox(agent_id="a1", batch_max_readings=3, batch_max_delay_s=0)
    for i in range(5):
        outbox.put_reading(_reading(i))
    first = await outbox.next()
    outbox.ack(first)
    second = await outbox.next()
    assert isinstance(first.message, TelemetryBatch) and isinstance(second.message, TelemetryBatch)
    assert [r.ts for r in first.message.readings] == [0, 1, 2]
    assert [r.ts for r in second.message.readings] == [3, 4]
    assert (first.message.seq, second.message.seq) == (0, 1)


async def test_unacked_message_is_returned_again() -> None:
    outbox = Outbox(agent_id="a1", batch_max_delay_s=0)
    outbox.put_reading(_reading(1))
    first = await outbox.next()
    assert await outbox.next() is first  # the publish failed; same batch, same seq
    outbox.ack(first)
    assert outbox.depth == 0


async def test_control_messages_go_first_and_are_never_dropped() -> None:
    outbox = Outbox(agent_id="a1", max_readings=100, batch_max_delay_s=0)
    for i in range(150):
        outbox.put_reading(_reading(i))
    event = DeviceEvent(agent_id="a1", device_id="d1", ts=1, kind="offline")
    outbox.put_control(Channel.EVENTS, event)
    assert outbox.dropped_readings == 50
    item = await outbox.next()
    assert item.message is event
    outbox.ack(item)
    batch = (await outbox.next()).message
    assert isinstance(batch, TelemetryBatch)
    assert batch.readings[0].ts == 50  # the oldest were dropped
