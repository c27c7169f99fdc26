"""Point values to and from Modbus registers: pure functions written with :mod:`struct`.

A point's *raw* value is what the wire carries, decoded by data type but not scaled (scaling
is :meth:`device_profiles.Point.from_raw`, applied by the agent):

* ``bool``: one coil / discrete input (registers = ``[bit]``), or bit ``bit`` of one register;
* ``int16`` ... ``uint64``: an ``int``; ``float32`` / ``float64``: a ``float``;
* ``string``: ``length`` registers of UTF-8 (ASCII is a subset), padded with NUL bytes; the
  value ends at the first NUL.

``byte_order`` is the order of the two bytes inside each register, ``word_order`` the order of
the registers of a 32/64-bit value (``big`` = most significant first, the Modbus convention).
Strings are a sequence of bytes, so only ``byte_order`` applies to them.

Malformed registers raise :class:`~drivers.errors.ProtocolError`; values that cannot be put
on the wire raise :class:`~drivers.errors.EncodeError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

from device_profiles import Point, Value
from drivers.errors import EncodeError, ProtocolError

__all__ = ["decode", "encode", "register_count"]

_FORMATS: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
_FLOATS = ("float32", "float64")
_Order = Literal["big", "little"]


def register_count(point: Point) -> int:
    """Registers (or bits, for coils and discrete inputs) the point occupies."""
    return point.modbus.register_count(point.type)


def decode(point: Point, registers: Sequence[int]) -> Value:
    """The raw value of ``point`` from exactly its registers (or its one bit)."""
    loc = point.modbus
    expected = register_count(point)
    if len(registers) != expected:
        raise ProtocolError(
            f"a {point.type} at {loc.table} {loc.address} needs {expected} "
            f"{'bit' if loc.is_bit_table else 'register(s)'}, got {len(registers)}"
        )
    if loc.is_bit_table:
        if registers[0] not in (0, 1):
            raise ProtocolError(f"a bit must be 0 or 1, got {registers[0]!r}")
        return bool(registers[0])
    for register in registers:
        if isinstance(register, bool) or not 0 <= register <= 0xFFFF:
            raise ProtocolError(f"a register holds 0..65535, got {register!r}")
    if point.type == "bool":
        return bool((registers[0] >> (loc.bit or 0)) & 1)
    data = _to_bytes(registers, loc.byte_order, loc.word_order if point.type != "string" else "big")
    if point.type == "string":
        try:
            return data.split(b"\x00", 1)[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"string at {loc.table} {loc.address} is not UTF-8: {exc}") from exc
    value: int | float = struct.unpack(">" + _FORMATS[point.type], data)[0]
    return value


def encode(point: Point, raw: Value, *, current: Sequence[int] | None = None) -> list[int]:
    """The registers (or ``[bit]``) that carry ``raw`` for ``point``.

    A bool stored in one bit of a register changes only that bit: pass the register's present
    value as ``current`` (``[register]``), as the other bits belong to other points.
    """
    loc = point.modbus
    if point.type == "bool":
        if not isinstance(raw, bool):
            raise EncodeError(f"a bool point takes true or false, got {raw!r}")
        if loc.is_bit_table:
            return [int(raw)]
        if current is None or len(current) != 1 or not 0 <= current[0] <= 0xFFFF:
            raise EncodeError(
                f"bit {loc.bit} of {loc.table} {loc.address}: pass the register's current "
                f"value as current=[register], got {current!r}"
            )
        mask = 1 << (loc.bit or 0)
        return [(current[0] | mask) if raw else (current[0] & ~mask)]
    if point.type == "string":
        return _encode_string(point, raw)
    fmt = _FORMATS[point.type]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise EncodeError(f"a {point.type} takes a number, got {raw!r}")
    if point.type not in _FLOATS and not isinstance(raw, int):
        raise EncodeError(f"a {point.type} takes an int, got {raw!r}")
    try:
        data = struct.pack(">" + fmt, raw)
    except (struct.error, OverflowError) as exc:
        raise EncodeError(f"{raw!r} does not fit a {point.type}") from exc
    return _to_registers(data, loc.byte_order, loc.word_order)


def _encode_string(point: Point, raw: Value) -> list[int]:
    if not isinstance(raw, str):
        raise EncodeError(f"a string point takes a str, got {raw!r}")
    size = 2 * register_count(point)
    try:
        data = raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise EncodeError(f"{raw!r} cannot be encoded as UTF-8: {exc}") from exc
    if len(data) > size:
        raise EncodeError(f"{raw!r} is {len(data)} bytes in UTF-8; the point holds {size}")
    return _to_registers(data.ljust(size, b"\x00"), point.modbus.byte_order, "big")


def _to_bytes(registers: Sequence[int], byte_order: _Order, word_order: _Order) -> bytes:
    words = list(registers)
    if word_order == "little":
        words.reverse()
    return b"".join(w.to_bytes(2, byte_order) for w in words)


def _to_registers(data: bytes, byte_order: _Order, word_order: _Order) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], byte_order) for i in range(0, len(data), 2)]
    if word_order == "little":
        words.reverse()
    return words
