"""drivers.modbus.codec: raw values to registers and back, for every type and byte/word order."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_profiles import ModbusLocation, Point, load_builtin_profile
from drivers import DeviceException, EncodeError, ProtocolError
from drivers.modbus.codec import decode, encode, register_count

pytestmark = pytest.mark.unit

ORDERS = ["big", "little"]
# each test below runs once per type x byte order x word order: fewer examples per run
PER_COMBINATION = settings(max_examples=40)
INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def point(type_: str, table: str = "holding_register", **loc: Any) -> Point:
    return Point(type=type_, modbus=ModbusLocation(table=table, address=0, **loc))


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("byte_order", ORDERS)
@pytest.mark.parametrize("word_order", ORDERS)
@pytest.mark.parametrize("type_", list(INT_RANGES))
@PER_COMBINATION
@given(data=st.data())
def test_integers_round_trip(type_: str, byte_order: str, word_order: str, data: st.DataObject):
    p = point(type_, byte_order=byte_order, word_order=word_order)
    raw = data.draw(st.integers(*INT_RANGES[type_]))
    registers = encode(p, raw)
    assert len(registers) == register_count(p)
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert decode(p, registers) == raw


@pytest.mark.parametrize("byte_order", ORDERS)
@pytest.mark.parametrize("word_order", ORDERS)
@pytest.mark.parametrize(("type_", "width"), [("float32", 32), ("float64", 64)])
@PER_COMBINATION
@given(data=st.data())
def test_floats_round_trip(
    type_: str, width: int, byte_order: str, word_order: str, data: st.DataObject
):
    p = point(type_, byte_order=byte_order, word_order=word_order)
    raw = data.draw(st.floats(width=width, allow_nan=False))
    decoded = decode(p, encode(p, raw))
    assert isinstance(decoded, float)
    assert decoded == raw


@pytest.mark.parametrize("type_", ["float32", "float64"])
def test_nan_round_trips_as_nan(type_: str):
    p = point(type_)
    decoded = decode(p, encode(p, math.nan))
    assert isinstance(decoded, float)
    assert math.isnan(decoded)


@pytest.mark.parametrize("byte_order", ORDERS)
@pytest.mark.parametrize("word_order", ORDERS)
@PER_COMBINATION
@given(
    length=st.integers(1, 20),
    text=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
)
def test_strings_round_trip(byte_order: str, word_order: str, length: int, text: str):
    p = point("string", length=length, byte_order=byte_order, word_order=word_order)
    if len(text.encode()) > 2 * length:
        with pytest.raises(EncodeError):
            encode(p, text)
        return
    registers = encode(p, text)
    assert len(registers) == length
    assert decode(p, registers) == text


@pytest.mark.parametrize("table", ["coil", "discrete_input"])
@given(value=st.booleans())
def test_bits_round_trip(table: str, value: bool):
    p = point("bool", table=table)
    assert encode(p, value) == [int(value)]
    assert decode(p, encode(p, value)) is value
    assert decode(p, [value]) is value  # pymodbus hands bits over as bools


@given(bit=st.integers(0, 15), register=st.integers(0, 0xFFFF), value=st.booleans())
def test_bit_of_register_round_trip_leaves_other_bits(bit: int, register: int, value: bool):
    p = point("bool", bit=bit)
    [new] = encode(p, value, current=[register])
    assert decode(p, [new]) is value
    assert new & ~(1 << bit) == register & ~(1 << bit)


# -- known vectors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "byte_order", "word_order", "raw", "registers"),
    [
        ("float32", "big", "big", 1.0, [0x3F80, 0x0000]),
        ("float32", "big", "little", 1.0, [0x0000, 0x3F80]),
        ("float32", "little", "big", 1.0, [0x803F, 0x0000]),
        ("float32", "little", "little", 1.0, [0x0000, 0x803F]),
        ("float32", "big", "big", -2.5, [0xC020, 0x0000]),
        ("float64", "big", "big", 1.0, [0x3FF0, 0, 0, 0]),
        ("float64", "big", "little", 1.0, [0, 0, 0, 0x3FF0]),
        ("int16", "big", "big", -1, [0xFFFF]),
        ("int16", "little", "big", 0x0102, [0x0201]),
        ("uint16", "big", "little", 0x1234, [0x1234]),  # word order: multi-register only
        ("int32", "big", "big", 0x01020304, [0x0102, 0x0304]),
        ("int32", "big", "little", 0x01020304, [0x0304, 0x0102]),
        ("int32", "little", "little", 0x01020304, [0x0403, 0x0201]),
        ("int32", "big", "big", -2, [0xFFFF, 0xFFFE]),
        ("uint32", "big", "big", 123456789, [0x075B, 0xCD15]),
        ("int64", "big", "big", -1, [0xFFFF] * 4),
        ("uint64", "big", "big", 0x0001000200030004, [1, 2, 3, 4]),
        ("uint64", "big", "little", 0x0001000200030004, [4, 3, 2, 1]),
    ],
)
def test_known_vectors(
    type_: str, byte_order: str, word_order: str, raw: float, registers: list[int]
):
    p = point(type_, byte_order=byte_order, word_order=word_order)
    assert encode(p, raw) == registers
    assert decode(p, registers) == raw


def test_string_vectors():
    p = point("string", length=3)
    assert encode(p, "AB") == [0x4142, 0x0000, 0x0000]
    assert encode(p, "ABC") == [0x4142, 0x4300, 0x0000]
    assert decode(p, [0x4142, 0x4300, 0x4444]) == "ABC"  # ends at the first NUL
    swapped = point("string", length=2, byte_order="little")
    assert encode(swapped, "ABC") == [0x4241, 0x0043]
    assert decode(swapped, [0x4241, 0x0043]) == "ABC"
    assert encode(p, "é") == [0xC3A9, 0, 0]  # UTF-8


def test_smart_pole_illuminance_is_low_word_first():
    illuminance = load_builtin_profile("smart_pole").points["illuminance"]
    assert encode(illuminance, 1.0) == [0x0000, 0x3F80]
    assert decode(illuminance, [0x0000, 0x3F80]) == 1.0


def test_bit_of_register_vectors():
    p = point("bool", table="input_register", bit=1)
    assert decode(p, [0b10]) is True
    assert decode(p, [0b01]) is False
    assert encode(p, True, current=[0b1000_0001]) == [0b1000_0011]
    assert encode(p, False, current=[0xFFFF]) == [0xFFFD]


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "registers"),
    [
        (point("float32"), [0x3F80]),
        (point("float32"), [0x3F80, 0, 0]),
        (point("int64"), [1, 2, 3]),
        (point("uint16"), []),
        (point("string", length=2), [0x4142]),
        (point("bool", table="coil"), [True, False]),
    ],
)
def test_wrong_register_count_is_a_protocol_error(p: Point, registers: list[int]):
    with pytest.raises(ProtocolError, match="needs"):
        decode(p, registers)


@pytest.mark.parametrize(
    ("p", "registers"),
    [
        (point("uint16"), [0x10000]),
        (point("int16"), [-1]),
        (point("bool", table="coil"), [2]),
        (point("string", length=1), [0xFF00]),  # not UTF-8
    ],
)
def test_malformed_registers_are_protocol_errors(p: Point, registers: list[int]):
    with pytest.raises(ProtocolError):
        decode(p, registers)


@pytest.mark.parametrize(
    ("p", "raw"),
    [
        (point("uint16"), -1),
        (point("uint16"), 65536),
        (point("int16"), 40000),
        (point("uint32"), 2**32),
        (point("int64"), 2**63),
        (point("uint16"), 1.5),  # ints take ints: Point.to_raw rounds before the driver
        (point("uint16"), True),
        (point("uint16"), "7"),
        (point("float32"), 1e39),
        (point("float32"), "1.0"),
        (point("string", length=1), "abc"),
        (point("string", length=1), 5),
        (point("string", length=1), "\ud800"),  # a lone surrogate is not UTF-8
        (point("bool", table="coil"), 1),
        (point("bool", bit=3), True),  # needs current=[register]
    ],
)
def test_unencodable_values_raise_encode_error(p: Point, raw: Any):
    with pytest.raises(EncodeError):
        encode(p, raw)


def test_encode_error_is_a_value_error():
    with pytest.raises(ValueError, match="does not fit a uint16"):
        encode(point("uint16"), 70000)


def test_device_exception_names_its_code():
    exc = DeviceException(code=2, function=4)
    assert (exc.code, exc.function, exc.name) == (2, 4, "ILLEGAL DATA ADDRESS")
    assert "ILLEGAL DATA ADDRESS" in str(exc)
    assert DeviceException(code=99, function=3).name == "UNKNOWN EXCEPTION 99"
