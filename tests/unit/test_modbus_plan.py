"""drivers.modbus.plan: coalescing point reads into Modbus requests."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_profiles import ModbusLocation, Point, load_builtin_profile
from drivers import ConfigurationError
from drivers.modbus.codec import register_count
from drivers.modbus.plan import MAX_READ_BITS, MAX_READ_REGISTERS, ReadBlock, plan_reads

pytestmark = pytest.mark.unit

BIT_TABLES = ("coil", "discrete_input")


def reg(address: int, type_: str = "uint16", table: str = "input_register", **loc: Any) -> Point:
    return Point(type=type_, modbus=ModbusLocation(table=table, address=address, **loc))


def bit(address: int, table: str = "coil") -> Point:
    return Point(type="bool", modbus=ModbusLocation(table=table, address=address))


def spans(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    return [(b.table, b.start, b.count) for b in blocks]


def test_smart_pole_reads_in_one_request_per_table():
    profile = load_builtin_profile("smart_pole")
    blocks = plan_reads(profile.points)
    assert spans(blocks) == [
        ("coil", 0, 1),
        ("discrete_input", 0, 2),
        ("holding_register", 0, 1),
        ("input_register", 0, 14),
    ]
    assert set(blocks[3].points) == {
        name for name, p in profile.points.items() if p.modbus.table == "input_register"
    }


def test_empty_request_plans_nothing():
    assert plan_reads({}) == []


def test_gap_up_to_max_gap_is_read_through():
    points = {"a": reg(0), "b": reg(9)}  # 8 unused registers between them
    assert spans(plan_reads(points)) == [("input_register", 0, 10)]
    assert spans(plan_reads(points, max_gap=7)) == [
        ("input_register", 0, 1),
        ("input_register", 9, 1),
    ]


def test_gap_beyond_max_gap_splits():
    points = {"a": reg(0), "b": reg(10)}
    assert spans(plan_reads(points)) == [("input_register", 0, 1), ("input_register", 10, 1)]


def test_max_gap_zero_merges_only_adjacent_points():
    points = {"a": reg(0, "float32"), "b": reg(2), "c": reg(4)}
    assert spans(plan_reads(points, max_gap=0)) == [
        ("input_register", 0, 3),
        ("input_register", 4, 1),
    ]


def test_multi_register_points_count_their_whole_span():
    points = {"f": reg(10, "float64"), "g": reg(20, "uint32")}  # f ends at 14, gap 6
    [block] = plan_reads(points)
    assert (block.start, block.count, block.points) == (10, 12, ("f", "g"))


def test_block_stops_at_125_registers():
    fits = {"a": reg(0), "b": reg(124)}
    assert spans(plan_reads(fits, max_gap=200)) == [("input_register", 0, 125)]
    too_far = {"a": reg(0), "b": reg(124, "uint32")}  # together: 126 registers
    assert spans(plan_reads(too_far, max_gap=200)) == [
        ("input_register", 0, 1),
        ("input_register", 124, 2),
    ]


def test_block_stops_at_2000_bits():
    points = {"a": bit(0), "b": bit(1999), "c": bit(2000)}
    assert spans(plan_reads(points, max_gap=2000)) == [("coil", 0, 2000), ("coil", 2000, 1)]


def test_bits_of_one_register_share_the_block():
    points = {
        "x": reg(13, "bool", bit=0),
        "y": reg(13, "bool", bit=1),
        "z": reg(13, "bool", bit=15),
    }
    [block] = plan_reads(points)
    assert (block.start, block.count, set(block.points)) == (13, 1, {"x", "y", "z"})


def test_tables_are_never_mixed():
    points = {
        "h": reg(0, table="holding_register"),
        "i": reg(0),
        "c": bit(0),
        "d": bit(0, "discrete_input"),
    }
    assert [b.table for b in plan_reads(points)] == [
        "coil",
        "discrete_input",
        "holding_register",
        "input_register",
    ]


def test_device_limits_can_be_lower():
    points = {f"p{i}": reg(i) for i in range(10)}
    assert spans(plan_reads(points, max_registers=4)) == [
        ("input_register", 0, 4),
        ("input_register", 4, 4),
        ("input_register", 8, 2),
    ]


def test_point_larger_than_a_read_is_refused():
    with pytest.raises(ConfigurationError, match="at most 4"):
        plan_reads({"s": reg(0, "string", length=5)}, max_registers=4)


def test_negative_gap_is_refused():
    with pytest.raises(ConfigurationError):
        plan_reads({"a": reg(0)}, max_gap=-1)


# -- property -------------------------------------------------------------------------------

TYPES = ["bool", "int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "string"]


@st.composite
def points_strategy(draw: st.DrawFn) -> dict[str, Point]:
    """Up to 40 points on random tables and addresses that do not overlap (as in a profile)."""
    result: dict[str, Point] = {}
    taken: dict[tuple[str, int], set[int] | None] = {}  # cell -> bits used, None = whole
    for i in range(draw(st.integers(0, 40))):
        table = draw(
            st.sampled_from(["coil", "discrete_input", "holding_register", "input_register"])
        )
        address = draw(st.integers(0, 3000))
        if table in BIT_TABLES:
            p = bit(address, table)
        else:
            type_ = draw(st.sampled_from(TYPES))
            extra = {}
            if type_ == "bool":
                extra["bit"] = draw(st.integers(0, 15))
            elif type_ == "string":
                extra["length"] = draw(st.integers(1, 123))
            p = reg(address, type_, table, **extra)
        cells = [(table, c) for c in range(address, address + register_count(p))]
        b = p.modbus.bit
        if b is None and any(c in taken for c in cells):
            continue
        if b is not None and (
            taken.get(cells[0], set()) is None or b in (taken.get(cells[0]) or ())
        ):
            continue
        for c in cells:
            taken[c] = None if b is None else {*(taken.get(c) or ()), b}
        result[f"p{i}"] = p
    return result


@given(points=points_strategy(), max_gap=st.integers(0, 130))
def test_every_point_is_in_exactly_one_block_within_limits(points: dict[str, Point], max_gap: int):
    blocks = plan_reads(points, max_gap=max_gap)
    seen = [name for block in blocks for name in block.points]
    assert sorted(seen) == sorted(points)  # each point once, none missing
    for block in blocks:
        limit = MAX_READ_BITS if block.table in BIT_TABLES else MAX_READ_REGISTERS
        assert 1 <= block.count <= limit
        assert block.start >= 0
        assert block.end <= 65536
        for name in block.points:
            p = points[name]
            assert p.modbus.table == block.table
            assert block.start <= p.modbus.address
            assert p.modbus.address + register_count(p) <= block.end
    for before, after in itertools.pairwise(blocks):
        if before.table != after.table:
            continue
        assert before.end <= after.start  # ordered, no overlap
        limit = MAX_READ_BITS if before.table in BIT_TABLES else MAX_READ_REGISTERS
        # greedy: a split is needed, either for the gap or for the limit
        assert after.start - before.end > max_gap or after.end - before.start > limit
