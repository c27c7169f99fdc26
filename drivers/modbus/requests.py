"""The Modbus requests behind a driver's reads and writes, the same over TCP and RTU.

A driver hands these functions a :data:`Send`: run one request (its function code, and what to
call on the pymodbus client) and return the checked answer, or raise a
:class:`~drivers.errors.DriverError`. The transport is the driver's: a TCP connection of its
own (:mod:`drivers.modbus.tcp`), or one transaction on a shared serial bus
(:mod:`drivers.modbus.rtu`, :mod:`drivers.modbus.bus`). What is sent is decided here:

* a read block (:class:`~drivers.modbus.plan.ReadBlock`): FC1 coils, FC2 discrete inputs, FC3
  holding registers, FC4 input registers; the answer must hold the block's registers (or bits);
* a point write (:class:`ModbusWrite`): FC5 for a coil, FC6 for one holding register, FC16 for
  several, and FC3 + FC6 (read-modify-write) for a bool kept in one bit of a holding register.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from pymodbus.client import ModbusBaseClient
from pymodbus.pdu import ModbusPDU

from device_profiles import ModbusTable, Point, Value
from drivers.errors import ProtocolError
from drivers.modbus.codec import encode
from drivers.modbus.plan import ReadBlock, decode_block

__all__ = ["READ_FUNCTIONS", "ModbusWrite", "Request", "Send", "read_block", "read_points"]

#: One request on a pymodbus client, e.g. ``lambda c: c.read_coils(0, count=2, device_id=3)``.
Request = Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]
#: Run ``request`` (function code ``function``) on the transport; the checked answer.
Send = Callable[[int, Request], Awaitable[ModbusPDU]]

#: The function code reading each table.
READ_FUNCTIONS: dict[ModbusTable, int] = {
    "coil": 1,
    "discrete_input": 2,
    "holding_register": 3,
    "input_register": 4,
}


async def read_block(send: Send, unit_id: int, block: ReadBlock) -> list[int]:
    """The registers (or bits, as 0 and 1) of ``block``; ProtocolError if the answer is short."""
    start, count = block.start, block.count

    def request(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
        readers = {
            "coil": client.read_coils,
            "discrete_input": client.read_discrete_inputs,
            "holding_register": client.read_holding_registers,
            "input_register": client.read_input_registers,
        }
        return readers[block.table](start, count=count, device_id=unit_id)

    function = READ_FUNCTIONS[block.table]
    response = await send(function, request)
    if function in (1, 2):
        bits = list(response.bits)
        if len(bits) < count:  # answers are padded to whole bytes
            raise ProtocolError(f"asked {count} bits from {start}, got {len(bits)}")
        return [int(bit) for bit in bits[:count]]
    registers = list(response.registers)
    if len(registers) != count:
        raise ProtocolError(f"asked {count} registers from {start}, got {len(registers)}")
    return registers


async def read_points(
    send: Send, unit_id: int, points: Mapping[str, Point], blocks: Iterable[ReadBlock]
) -> dict[str, Value]:
    """The raw values of ``points`` (in their order), read block by block."""
    raw: dict[str, Value] = {}
    for block in blocks:
        raw.update(decode_block(points, block, await read_block(send, unit_id, block)))
    return {name: raw[name] for name in points}


@dataclass(frozen=True, slots=True)
class ModbusWrite:
    """The write of ``raw`` to the point ``name``, encoded by :meth:`encode` before any I/O."""

    name: str
    point: Point
    raw: Value
    registers: list[int]

    @classmethod
    def encode(cls, name: str, point: Point, raw: Value) -> ModbusWrite:
        """Encode now, so that a value the point cannot carry fails before anything is sent."""
        registers = encode(point, raw, current=[0] if _bit_in_register(point) else None)
        return cls(name, point, raw, registers)

    async def run(self, send: Send, unit_id: int) -> None:
        """Send the write (FC5, FC6, FC16, or FC3 + FC6) for ``unit_id``."""
        loc, raw, registers = self.point.modbus, self.raw, self.registers
        if loc.table == "coil":
            await send(5, lambda c: c.write_coil(loc.address, bool(raw), device_id=unit_id))
        elif _bit_in_register(self.point):
            block = ReadBlock(loc.table, loc.address, 1, (self.name,))
            current = await read_block(send, unit_id, block)
            value = encode(self.point, raw, current=current)[0]
            await send(6, lambda c: c.write_register(loc.address, value, device_id=unit_id))
        elif len(registers) == 1:
            await send(6, lambda c: c.write_register(loc.address, registers[0], device_id=unit_id))
        else:
            await send(16, lambda c: c.write_registers(loc.address, registers, device_id=unit_id))


def _bit_in_register(point: Point) -> bool:
    """A bool kept in one bit of a holding register (written by read-modify-write)."""
    return point.type == "bool" and not point.modbus.is_bit_table
