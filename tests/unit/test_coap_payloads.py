"""CoAP payloads: what the driver makes of response bodies, and the bodies it writes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from device_profiles import Point, Value
from drivers.coap import (
    CoapDeviceException,
    CoapSettings,
    coap_code_name,
    decode_payload,
    encode_payload,
)
from drivers.coap.driver import CONTENT_FORMAT_CBOR, CONTENT_FORMAT_JSON, CONTENT_FORMAT_TEXT
from drivers.errors import DeviceException, EncodeError, ProtocolError

pytestmark = pytest.mark.unit


def point(type_: str, path: str = "/r", key: str | None = None) -> Point:
    location: dict[str, Any] = {"path": path} | ({"key": key} if key else {})
    return Point.model_validate({"type": type_, "coap": location})


TYPES = [
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
PLAIN = {t: point(t) for t in TYPES}
COVER = {
    "open": point("bool", "/cover", "open"),
    "tilt": point("float32", "/cover", "tilt"),
    "count": point("uint16", "/cover", "count"),
    "label": point("string", "/cover", "label"),
}


def _is_of_type(value: Value, type_: str) -> bool:
    if type_ == "bool":
        return isinstance(value, bool)
    if type_ == "string":
        return isinstance(value, str)
    if type_.startswith("float"):
        return isinstance(value, float) and math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


# -- text/plain -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "body", "expected"),
    [
        ("float32", b"0.3", 0.3),
        ("float32", b" 12 \n", 12.0),
        ("float64", b"-1.5e3", -1500.0),
        ("uint16", b"60", 60),
        ("uint16", b"60.0", 60),
        ("int16", b"-32768", -32768),
        ("bool", b"true", True),
        ("bool", b"FALSE", False),
        ("bool", b"1", True),
        ("string", b"hello \xc2\xb0", "hello °"),
    ],
)
def test_text_values(type_: str, body: bytes, expected: Value):
    raw = decode_payload(body, CONTENT_FORMAT_TEXT, {"v": PLAIN[type_]})["v"]
    assert raw == expected
    assert type(raw) is type(expected)


@pytest.mark.parametrize(
    ("type_", "body"),
    [
        ("float32", b""),
        ("float32", b"nan"),
        ("float32", b"inf"),
        ("float32", b"1_000"),
        ("float32", "١٢".encode()),  # non-ASCII digits are not a device's number
        ("float32", b"1e39"),  # beyond float32
        ("uint16", b"65536"),
        ("uint16", b"-1"),
        ("int16", b"1.5"),
        ("bool", b"yes"),
        ("string", b"\xff\xfe"),
    ],
)
def test_text_garbage_is_a_protocol_error(type_: str, body: bytes):
    with pytest.raises(ProtocolError):
        decode_payload(body, CONTENT_FORMAT_TEXT, {"v": PLAIN[type_]})


def test_no_content_format_is_text_for_plain_points_json_for_keyed():
    assert decode_payload(b"7", None, {"v": PLAIN["uint16"]}) == {"v": 7}
    assert decode_payload(b'{"open": true}', None, {"open": COVER["open"]}) == {"open": True}


# -- application/json --------------------------------------------------------------------------


def test_json_keys_of_one_resource():
    body = json.dumps({"open": False, "tilt": 0.4, "count": 3, "label": "A-17", "extra": 1})
    raw = decode_payload(body.encode(), CONTENT_FORMAT_JSON, COVER)
    assert raw == {"open": False, "tilt": 0.4, "count": 3, "label": "A-17"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"open": tru',  # truncated
        b"[1, 2]",  # not an object
        b'{"tilt": 1}',  # keys missing
        b'{"open": 1, "tilt": 0, "count": 0, "label": ""}',  # 1 is not a bool
        b'{"open": true, "tilt": "0", "count": 0, "label": ""}',  # "0" is not a number
        b'{"open": true, "tilt": NaN, "count": 0, "label": ""}',
        b'{"open": true, "tilt": 0, "count": 1.5, "label": ""}',
        b'{"open": true, "tilt": 0, "count": -1, "label": ""}',
        b'{"open": true, "tilt": 0, "count": true, "label": ""}',
        b'{"open": true, "tilt": 0, "count": 0, "label": null}',
        b"\xff",
        b"[" * 100_000,  # deeper than the parser recurses
    ],
)
def test_json_garbage_is_a_protocol_error(body: bytes):
    with pytest.raises(ProtocolError):
        decode_payload(body, CONTENT_FORMAT_JSON, COVER)


def test_a_plain_json_value():
    assert decode_payload(b"21.5", CONTENT_FORMAT_JSON, {"v": PLAIN["float32"]}) == {"v": 21.5}


def test_text_body_for_keyed_points_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="no keys"):
        decode_payload(b"1", CONTENT_FORMAT_TEXT, COVER)


@pytest.mark.parametrize("content_format", [CONTENT_FORMAT_CBOR, 40, 42, 65000])
def test_unsupported_content_formats(content_format: int):
    with pytest.raises(ProtocolError):
        decode_payload(b"\x01", content_format, {"v": PLAIN["uint16"]})


# -- any bytes: a value of the point's type, or ProtocolError, nothing else ---------------------


RESOURCES = [{"v": p} for p in PLAIN.values()] + [COVER]


@settings(max_examples=300)
@given(
    body=st.binary(max_size=64),
    content_format=st.sampled_from(
        [None, CONTENT_FORMAT_TEXT, CONTENT_FORMAT_JSON, CONTENT_FORMAT_CBOR, 41]
    ),
    points=st.sampled_from(RESOURCES),
)
def test_random_bytes_give_values_or_protocol_error(
    body: bytes, content_format: int | None, points: dict[str, Point]
):
    try:
        raw = decode_payload(body, content_format, points)
    except ProtocolError:
        return
    assert list(raw) == list(points)
    for name, value in raw.items():
        assert _is_of_type(value, points[name].type)


@settings(max_examples=100)
@given(
    text=st.text(max_size=24),
    content_format=st.sampled_from([None, CONTENT_FORMAT_TEXT, CONTENT_FORMAT_JSON]),
    points=st.sampled_from(RESOURCES),
)
def test_random_text_gives_values_or_protocol_error(
    text: str, content_format: int | None, points: dict[str, Point]
):
    try:
        raw = decode_payload(text.encode(), content_format, points)
    except ProtocolError:
        return
    for name, value in raw.items():
        assert _is_of_type(value, points[name].type)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(list(COVER)), children, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=200)
@given(document=json_values)
def test_random_json_gives_values_or_protocol_error(document: Any):
    body = json.dumps(document).encode()
    try:
        raw = decode_payload(body, CONTENT_FORMAT_JSON, COVER)
    except ProtocolError:
        return
    for name, value in raw.items():
        assert _is_of_type(value, COVER[name].type)


# -- writes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "raw", "body"),
    [
        ("uint16", 30, b"30"),
        ("uint16", 30.0, b"30"),
        ("float32", 2.5, b"2.5"),
        ("float32", 3, b"3.0"),
        ("bool", True, b"true"),
        ("string", "A-17", b"A-17"),
    ],
)
def test_plain_writes_are_text(type_: str, raw: Value, body: bytes):
    assert encode_payload(PLAIN[type_], raw) == (body, CONTENT_FORMAT_TEXT)


def test_keyed_writes_are_json_objects():
    body, content_format = encode_payload(COVER["count"], 7)
    assert (json.loads(body), content_format) == ({"count": 7}, CONTENT_FORMAT_JSON)


@pytest.mark.parametrize(
    ("type_", "raw"),
    [
        ("uint16", -1),
        ("uint16", 65536),
        ("uint16", 1.5),
        ("uint16", True),
        ("uint16", "7"),
        ("float32", math.nan),
        ("float32", math.inf),
        ("bool", 1),
        ("string", 5),
    ],
)
def test_unwritable_raw_values(type_: str, raw: Value):
    with pytest.raises(EncodeError):
        encode_payload(PLAIN[type_], raw)


@settings(max_examples=200)
@given(
    type_=st.sampled_from(TYPES),
    raw=st.booleans() | st.integers() | st.floats(allow_nan=False, width=32) | st.text(max_size=16),
    keyed=st.booleans(),
)
def test_what_is_written_reads_back(type_: str, raw: Value, keyed: bool):
    target = point(type_, key="v") if keyed else PLAIN[type_]
    try:
        body, content_format = encode_payload(target, raw)
    except EncodeError:
        return
    try:
        back = decode_payload(body, content_format, {"v": target})["v"]
    except ProtocolError:
        # only text that is not one value (e.g. "1e39" for a float32 point) may fail
        assert not keyed or type_ == "float32"
        return
    if type_ in ("string", "bool"):
        assert back == raw
    else:
        assert back == pytest.approx(raw)


# -- errors and settings ----------------------------------------------------------------------


def test_device_exception_names_the_coap_code():
    exc = CoapDeviceException(132, 1, "", path="/nothing")
    assert isinstance(exc, DeviceException)
    assert exc.name == "4.04 Not Found"
    assert str(exc) == "GET /nothing answered 4.04 Not Found"
    assert str(CoapDeviceException(163, 3, "busy", path="/x")) == (
        "PUT /x answered 5.03 Service Unavailable: busy"
    )
    assert coap_code_name(0x9F) == "4.31"


def test_settings():
    s = CoapSettings(host="10.0.5.20")
    assert (s.transport, s.port, s.observe, s.block_size, s.write_method) == (
        "coap",
        5683,
        True,
        1024,
        "PUT",
    )
    assert s.endpoint == "coap://10.0.5.20:5683"
    assert CoapSettings(host="fd00::1").endpoint == "coap://[fd00::1]:5683"
    assert [CoapSettings(host="h", block_size=b).block_size_exponent for b in (16, 64, 1024)] == [
        0,
        2,
        6,
    ]
    fast = CoapSettings(host="h", timeout_s=0.1, retries=1)
    assert fast.max_wait_s == pytest.approx(0.1 * 3 * 1.5 + 0.1)
    for bad in ({"block_size": 100}, {"retries": -1}, {"timeout_s": 0}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            CoapSettings.model_validate({"host": "h"} | bad)


HUGE = 10**400  # beyond the float range: math.isfinite raises OverflowError on it


@pytest.mark.parametrize("type_", ["uint16", "int64", "float32", "float64"])
def test_a_json_number_beyond_the_float_range_is_a_protocol_error(type_: str) -> None:
    body = ('{"v": ' + str(HUGE) + "}").encode()
    with pytest.raises(ProtocolError, match="does not fit"):
        decode_payload(body, CONTENT_FORMAT_JSON, {"v": point(type_, key="v")})


def test_writing_an_integer_beyond_the_float_range_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="does not fit a uint16"):
        encode_payload(point("uint16"), HUGE)
