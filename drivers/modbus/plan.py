"""Coalesce the points to read into as few Modbus read requests as the limits allow.

Points of one table are sorted by address and merged into one block while the gap between
them is at most ``max_gap`` registers (reading a few unused registers is far cheaper than
another request, above all on a serial bus) and the block stays within the protocol limit:
125 registers for FC3/FC4, 2000 bits for FC1/FC2. Devices that refuse reads of unmapped
registers need ``max_gap=0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from device_profiles import ModbusTable, Point, Value
from drivers.errors import ConfigurationError
from drivers.modbus.codec import decode, register_count

__all__ = [
    "DEFAULT_MAX_GAP",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "MaxGap",
    "PlanCache",
    "ReadBlock",
    "decode_block",
    "plan_reads",
]

DEFAULT_MAX_GAP = 8
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
#: The ``max_gap`` setting of a Modbus device (TCP and RTU alike).
MaxGap = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_READ_REGISTERS - 1,
        description="Unused registers a coalesced read may span; 0 for devices that refuse "
        "reads of unmapped addresses.",
    ),
]
_TABLE_ORDER: tuple[ModbusTable, ...] = (
    "coil",
    "discrete_input",
    "holding_register",
    "input_register",
)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: ModbusTable
    start: int
    count: int
    points: tuple[str, ...]

    @property
    def end(self) -> int:
        """First address after the block."""
        return self.start + self.count


def plan_reads(
    points: Mapping[str, Point],
    *,
    max_gap: int = DEFAULT_MAX_GAP,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
) -> list[ReadBlock]:
    """Read blocks covering every point exactly once, ordered by table and address."""
    if max_gap < 0 or max_registers < 1 or max_bits < 1:
        raise ConfigurationError(
            f"max_gap must be >= 0 and the limits >= 1 (got {max_gap}, {max_registers}, {max_bits})"
        )
    blocks: list[ReadBlock] = []
    for table in _TABLE_ORDER:
        spans = sorted(
            (p.modbus.address, p.modbus.address + register_count(p), name)
            for name, p in points.items()
            if p.modbus.table == table
        )
        limit = max_bits if table in ("coil", "discrete_input") else max_registers
        blocks.extend(_coalesce(table, spans, max_gap, limit))
    return blocks


def _coalesce(
    table: ModbusTable, spans: list[tuple[int, int, str]], max_gap: int, limit: int
) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    start = end = 0
    names: list[str] = []
    for span_start, span_end, name in spans:
        if span_end - span_start > limit:
            raise ConfigurationError(
                f"point '{name}' spans {span_end - span_start} addresses; "
                f"one read takes at most {limit}"
            )
        if names and span_start - end <= max_gap and max(end, span_end) - start <= limit:
            end = max(end, span_end)
            names.append(name)
            continue
        if names:
            blocks.append(ReadBlock(table, start, end - start, tuple(names)))
        start, end, names = span_start, span_end, [name]
    if names:
        blocks.append(ReadBlock(table, start, end - start, tuple(names)))
    return blocks


class PlanCache:
    """Read plans by the tuple of point names asked for: a poller asks the same set every
    cycle, so planning happens once (at most ``size`` plans kept)."""

    def __init__(self, max_gap: int = DEFAULT_MAX_GAP, size: int = 64) -> None:
        self.max_gap = max_gap
        self.size = size
        self._plans: dict[tuple[str, ...], list[ReadBlock]] = {}

    def blocks(self, points: Mapping[str, Point]) -> list[ReadBlock]:
        key = tuple(points)
        found = self._plans.get(key)
        if found is None:
            if len(self._plans) >= self.size:
                self._plans.clear()
            found = self._plans[key] = plan_reads(points, max_gap=self.max_gap)
        return found


def decode_block(
    points: Mapping[str, Point], block: ReadBlock, data: Sequence[int]
) -> dict[str, Value]:
    """The raw values of ``block``'s points from the registers (or bits) read for it."""
    out: dict[str, Value] = {}
    for name in block.points:
        point = points[name]
        offset = point.modbus.address - block.start
        out[name] = decode(point, data[offset : offset + register_count(point)])
    return out
