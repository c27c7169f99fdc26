"""A device's Modbus register image: what a simulator sets and a Modbus client reads and writes.

The image holds the four Modbus tables of one profile, each sized to cover the addresses the
profile declares. The simulator works in engineering values (:meth:`RegisterImage.get`,
:meth:`RegisterImage.set`, converted with the profile's ``Point.to_raw``/``from_raw`` and the
drivers' codec); Modbus clients work in registers through the pymodbus server.

Serving (pymodbus 3.16): the server's datastore is a ``SimDevice`` built by
:meth:`RegisterImage.sim_device`, with one block per table and an ``action`` hook that pymodbus
awaits on every access. The image is the single source of truth: on a read the hook copies the
requested registers into pymodbus's copy; on a write it checks the addresses, applies the values
to the image, appends a :class:`WriteRecord` per point touched to :attr:`RegisterImage.writes`
and tells the listeners (the physics model reacts at once). Reads of unmapped registers inside a
table's span return 0, as on most devices; reads outside it and writes to any register that no
writable point declares are refused with ILLEGAL DATA ADDRESS. A write of a value outside the
point's declared range is accepted, as a real device might, and logged with ``in_range=False``:
refusing it is the agent's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from device_profiles import CommandRejected, DeviceProfile, ModbusTable, Point, Value
from drivers.modbus.codec import decode, encode, register_count

__all__ = ["RegisterImage", "WriteListener", "WriteRecord"]

log = structlog.get_logger(__name__)

_BIT_TABLES: tuple[ModbusTable, ...] = ("coil", "discrete_input")
_FUNCTION_TABLE: dict[int, ModbusTable] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete_input",
    3: "holding_register",
    6: "holding_register",
    16: "holding_register",
    22: "holding_register",
    23: "holding_register",
    4: "input_register",
}


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One point changed by a Modbus client's write."""

    ts: float
    point: str
    raw: Value
    value: Value
    #: False when the value breaks the profile's min/max/enum (accepted all the same).
    in_range: bool = True


WriteListener = Callable[[WriteRecord], None]


class _Table:
    """The cells of one Modbus table from ``base``: registers, or bits as 0/1."""

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.cells = [0] * size

    def covers(self, address: int, count: int) -> bool:
        return self.base <= address and address + count <= self.base + len(self.cells)

    def get(self, address: int, count: int) -> list[int]:
        start = address - self.base
        return self.cells[start : start + count]

    def put(self, address: int, values: Sequence[int]) -> None:
        start = address - self.base
        self.cells[start : start + len(values)] = [int(v) for v in values]


class RegisterImage:
    """The registers of one device of ``profile``; ``clock`` stamps the write log."""

    def __init__(self, profile: DeviceProfile, *, clock: Callable[[], float] = time.time) -> None:
        self.profile = profile
        self.clock = clock
        #: Every write a Modbus client made, oldest first.
        self.writes: list[WriteRecord] = []
        self._listeners: list[WriteListener] = []
        self._tables: dict[ModbusTable, _Table] = {}
        self._writable: dict[ModbusTable, set[int]] = {}
        spans: dict[ModbusTable, tuple[int, int]] = {}
        for point in profile.points.values():
            loc = point.modbus
            start, end = loc.address, loc.address + register_count(point)
            low, high = spans.get(loc.table, (start, end))
            spans[loc.table] = (min(low, start), max(high, end))
            if point.writable:
                self._writable.setdefault(loc.table, set()).update(range(start, end))
        for table, (low, high) in spans.items():
            if table in _BIT_TABLES:  # pymodbus keeps bits in 16-bit words: align to them
                base = low - low % 16
                self._tables[table] = _Table(base, (high - base + 15) // 16 * 16)
            else:
                self._tables[table] = _Table(low, high - low)

    # -- engineering and raw values -----------------------------------------------------

    def get(self, name: str) -> Value:
        """Engineering value of a point (``raw * scale + offset``)."""
        point = self._point(name)
        return point.from_raw(self.get_raw(name))

    def set(self, name: str, value: Value) -> None:
        """Set a point's engineering value (any point: the device side sets inputs too)."""
        point = self._point(name)
        self.set_raw(name, point.to_raw(value))

    def get_raw(self, name: str) -> Value:
        """Raw (unscaled) value of a point."""
        point = self._point(name)
        return decode(point, self._cells(point))

    def set_raw(self, name: str, raw: Value) -> None:
        """Set a point's raw value; ``EncodeError`` if its data type cannot hold it."""
        point = self._point(name)
        bit_in_register = point.type == "bool" and not point.modbus.is_bit_table
        cells = encode(point, raw, current=self._cells(point) if bit_in_register else None)
        self._tables[point.modbus.table].put(point.modbus.address, cells)

    def snapshot(self) -> dict[str, Value]:
        """Engineering values of every point."""
        return {name: self.get(name) for name in self.profile.points}

    def add_listener(self, listener: WriteListener) -> None:
        """Call ``listener`` with each WriteRecord, right after the write is applied."""
        self._listeners.append(listener)

    def remove_listener(self, listener: WriteListener) -> None:
        self._listeners.remove(listener)

    # -- pymodbus side ------------------------------------------------------------------

    def sim_device(self, unit_id: int) -> SimDevice:
        """A pymodbus datastore serving this image as unit ``unit_id``."""
        blocks: list[list[SimData]] = []
        for table in ("coil", "discrete_input", "holding_register", "input_register"):
            store = self._tables.get(table)
            if table in _BIT_TABLES:
                # tables the profile lacks get a placeholder; the action refuses access to it
                base, size = (store.base, len(store.cells)) if store else (0, 16)
                blocks.append([SimData(base, values=[False] * size, datatype=DataType.BITS)])
            elif store is not None:
                values = [0] * len(store.cells)
                blocks.append([SimData(store.base, values=values, datatype=DataType.REGISTERS)])
            else:
                blocks.append([SimData(0, datatype=DataType.INVALID)])
        return SimDevice(
            id=unit_id,
            simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
            action=self._on_access,
        )

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's hook, awaited before every access to a block (see SimDevice.action).

        ``registers`` is pymodbus's copy of the whole block from ``start_address``, to update
        in place. For coils and discrete inputs it holds 16 bits per register, ``address`` is
        a bit address and ``count`` counts registers.
        """
        table = _FUNCTION_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        store = self._tables.get(table)
        if store is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values:
            refused = self._client_write(table, store, address, [int(v) for v in set_values])
            if refused is not None:
                return refused
        if table in _BIT_TABLES:
            first = address // 16 - start_address
            for word in range(first, first + count):
                bits = store.cells[word * 16 : word * 16 + 16]
                registers[word] = sum(bit << i for i, bit in enumerate(bits))
        else:
            first = address - start_address
            registers[first : first + count] = store.cells[first : first + count]
        return None

    def _client_write(
        self, table: ModbusTable, store: _Table, address: int, values: list[int]
    ) -> ExcCodes | None:
        writable = self._writable.get(table, set())
        if not store.covers(address, len(values)) or not all(
            a in writable for a in range(address, address + len(values))
        ):
            log.warning("modbus write refused", table=table, address=address, count=len(values))
            return ExcCodes.ILLEGAL_ADDRESS
        store.put(address, values)
        now = self.clock()
        records = [
            self._record(now, name, point)
            for name, point in self.profile.points.items()
            if point.modbus.table == table
            and point.modbus.address < address + len(values)
            and address < point.modbus.address + register_count(point)
        ]
        for record in records:
            self.writes.append(record)
            if record.in_range:
                log.info("modbus write", point=record.point, raw=record.raw, value=record.value)
            else:
                log.warning(
                    "modbus write out of range accepted",
                    point=record.point,
                    raw=record.raw,
                    value=record.value,
                )
        for record in records:
            for listener in list(self._listeners):
                listener(record)
        return None

    def _record(self, now: float, name: str, point: Point) -> WriteRecord:
        raw = decode(point, self._cells(point))
        value = point.from_raw(raw)
        try:
            point.check_value(value)
        except CommandRejected:
            return WriteRecord(now, name, raw, value, in_range=False)
        return WriteRecord(now, name, raw, value)

    def _cells(self, point: Point) -> list[int]:
        return self._tables[point.modbus.table].get(point.modbus.address, register_count(point))

    def _point(self, name: str) -> Point:
        point = self.profile.points.get(name)
        if point is None:
            raise KeyError(f"profile '{self.profile.name}' has no point '{name}'")
        return point
