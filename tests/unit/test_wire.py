"""Wire contract v1: topics and payloads round-trip; bad messages raise WireError only."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_profiles.wire import (
    AgentState,
    Channel,
    CommandRequest,
    Reading,
    TelemetryBatch,
    WireError,
    decode,
    decode_telemetry,
    encode,
    parse_topic,
    shared,
    subscription,
    topic,
)

pytestmark = pytest.mark.unit


def test_topics_round_trip() -> None:
    for channel in Channel:
        name = topic("pole-0042", channel)
        assert parse_topic(name) == ("pole-0042", channel)
    assert topic("a1", Channel.TELEMETRY) == "iot/v1/a1/telemetry"
    assert subscription(Channel.STATE) == "iot/v1/+/state"
    assert shared("hub", subscription(Channel.TELEMETRY)) == "$share/hub/iot/v1/+/telemetry"


@pytest.mark.parametrize("bad", ["a/b", "+", "#", "", "x" * 65, "-start"])
def test_agent_ids_that_would_break_topics_are_refused(bad: str) -> None:
    with pytest.raises(WireError):
        topic(bad, Channel.TELEMETRY)


@pytest.mark.parametrize(
    "name", ["iot/v2/a/telemetry", "iot/v1/a/nope", "iot/v1/+/telemetry", "other", "iot/v1/a"]
)
def test_foreign_topics_are_refused(name: str) -> None:
    with pytest.raises(WireError):
        parse_topic(name)


values = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    st.one_of(
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    ),
    min_size=1,
    max_size=5,
)


@given(
    seq=st.integers(0, 2**40),
    readings=st.lists(
        st.builds(
            Reading,
            device_id=st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
            ts=st.integers(0, 2**45),
            values=values,
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_telemetry_round_trips(seq: int, readings: list[Reading]) -> None:
    batch = TelemetryBatch(agent_id="agent-1", seq=seq, readings=readings)
    decoded, bad = decode_telemetry(encode(batch))
    assert bad == []
    assert decoded == batch
    # types survive JSON: a bool stays a bool, an int an int
    for original, back in zip(batch.readings, decoded.readings, strict=True):
        for key, value in original.values.items():
            assert type(back.values[key]) is type(value)


def test_one_bad_reading_does_not_cost_the_others() -> None:
    payload = json.dumps(
        {
            "v": 1,
            "agent_id": "a1",
            "seq": 7,
            "readings": [
                {"device_id": "p1", "ts": 1, "values": {"power": 1.5}},
                {"device_id": "p2", "ts": "yesterday", "values": {"power": 2.5}},
                {"device_id": "p3", "ts": 3, "values": {"power": [1]}},
                {"device_id": "p4", "ts": 4, "values": {"power": 4.5}},
            ],
        }
    )
    batch, bad = decode_telemetry(payload)
    assert [r.device_id for r in batch.readings] == ["p1", "p4"]
    assert [index for index, _ in bad] == [1, 2]
    assert "ts" in bad[0][1]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{",
        b"[]",
        b'{"v": 2, "agent_id": "a", "seq": 1, "readings": []}',
        b"\xff\xfe",
        b'{"v":1}',
    ],
)
def test_broken_envelopes_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_telemetry(payload)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_error(payload: bytes) -> None:
    for model in (CommandRequest, AgentState):
        with contextlib.suppress(WireError):
            decode(model, payload)
    with contextlib.suppress(WireError):
        decode_telemetry(payload)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    state = decode(AgentState, b'{"v":1,"agent_id":"a","state":"online","future":42}')
    assert state.state == "online"


def test_agent_state_states_only_what_it_knows() -> None:
    """A Last Will states neither software version nor devices: omitted means "not
    stated", while an empty list would say "this agent has no devices"."""
    will = AgentState(agent_id="cabinet-1", state="offline")
    assert json.loads(encode(will)) == {"v": 1, "agent_id": "cabinet-1", "state": "offline"}
    decoded = decode(AgentState, encode(will))
    assert decoded.devices is None and decoded.software_version is None
    birth = AgentState(
        agent_id="cabinet-1", state="online", ts=1, software_version="0.1.0", devices=[]
    )
    assert json.loads(encode(birth))["devices"] == []  # a birth says "no devices" when so
    # an older agent's Last Will, with the empty fields, is still read
    old = decode(
        AgentState, b'{"v":1,"agent_id":"a","state":"offline","software_version":"","devices":[]}'
    )
    assert old.devices == []
