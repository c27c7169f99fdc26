"""The inbound queue's pieces: watermark validation, the get hook, the failure it raises."""

from __future__ import annotations

import aiomqtt
import pydantic
import pytest

from iot_runtime.mqtt import MqttSettings, make_client
from iot_runtime.mqtt_inbound import InboundOverflow, InboundQueue, InboundWindow

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
