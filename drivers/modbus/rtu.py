"""Modbus RTU driver: one device (unit id) on a shared serial bus.

The points to read are planned into the same coalesced blocks as over TCP
(:func:`drivers.modbus.plan.plan_reads`, the same ``max_gap``) and decoded with the same codec;
on a serial line coalescing matters most (at 9600 Bd one 125-register read moves ~400
registers/s against ~40 for single-register reads). Writes: FC5 for a coil, FC6 for one
register, FC16 for several, FC3 + FC6 for a bool in one bit of a holding register.

Each request is one transaction on the port's :class:`~drivers.modbus.bus.ModbusSerialBus`,
shared with the other devices on the line; the bus does the timing, retries and the translation
of failures. A driver holds its bus from ``connect()`` (or its first read or write) to
``close()``, and a lock of its own keeps a read-modify-write whole.

::

    settings = ModbusRtuSettings(port="/dev/ttyUSB0", baudrate=9600, parity="E", unit_id=3)
    async with ModbusRtuDriver(profile, settings) as driver:
        raw = await driver.read(["total_volume", "flow"])
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.pdu import ModbusPDU

from device_profiles import DeviceProfile, Value
from drivers.base import Driver
from drivers.errors import DriverError, ProtocolError
from drivers.modbus.bus import ModbusSerialBus, Request, acquire_bus, release_bus
from drivers.modbus.codec import encode
from drivers.modbus.plan import PlanCache, ReadBlock, decode_block
from drivers.modbus.rtu_settings import ModbusRtuSettings

__all__ = ["ModbusRtuDriver"]

log = structlog.get_logger(__name__)

_READ_FUNCTION = {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}


class ModbusRtuDriver(Driver):
    """A device reached over Modbus RTU, on a bus it may share with other devices."""

    def __init__(self, profile: DeviceProfile, settings: ModbusRtuSettings) -> None:
        super().__init__(profile)
        self.settings = settings
        self._bus: ModbusSerialBus | None = None
        self._lock = asyncio.Lock()
        self._plans = PlanCache(max_gap=settings.max_gap)

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def bus(self) -> ModbusSerialBus | None:
        """The bus this driver holds (shared with the other devices on its port), if any."""
        return self._bus

    @property
    def connected(self) -> bool:
        """True while the driver holds an open port (it may still turn out gone)."""
        return self._bus is not None and self._bus.connected

    async def connect(self) -> None:
        async with self._lock:
            bus = await self._held_bus()
            try:
                await bus.open()
            except DriverError:
                self._bus = None  # async with never reaches __aexit__: let go of the bus now
                await release_bus(bus)
                raise

    async def close(self) -> None:
        async with self._lock:
            bus, self._bus = self._bus, None
            if bus is not None:
                await release_bus(bus)

    async def read(self, names: Sequence[str]) -> dict[str, Value]:
        wanted = tuple(dict.fromkeys(names))
        points = {name: self.point(name) for name in wanted}
        if not points:
            return {}
        raw: dict[str, Value] = {}
        async with self._lock:
            for block in self._plans.blocks(points):
                raw.update(decode_block(points, block, await self._read_block(block)))
        return {name: raw[name] for name in wanted}

    async def write(self, name: str, raw: Value) -> None:
        point = self.writable_point(name)
        loc = point.modbus
        unit = self.settings.unit_id
        bit_in_register = point.type == "bool" and not loc.is_bit_table
        registers = encode(point, raw, current=[0] if bit_in_register else None)  # check early
        async with self._lock:
            if loc.table == "coil":
                await self._call(5, lambda c: c.write_coil(loc.address, bool(raw), device_id=unit))
            elif bit_in_register:
                current = await self._read_block(ReadBlock(loc.table, loc.address, 1, (name,)))
                value = encode(point, raw, current=current)[0]
                await self._call(6, lambda c: c.write_register(loc.address, value, device_id=unit))
            elif len(registers) == 1:
                await self._call(
                    6, lambda c: c.write_register(loc.address, registers[0], device_id=unit)
                )
            else:
                await self._call(
                    16, lambda c: c.write_registers(loc.address, registers, device_id=unit)
                )
        log.debug("modbus write", endpoint=self.endpoint, point=name, raw=raw)

    # -- internals ----------------------------------------------------------------------

    async def _held_bus(self) -> ModbusSerialBus:
        if self._bus is None:
            self._bus = await acquire_bus(self.settings)
        return self._bus

    async def _call(self, function: int, request: Request) -> ModbusPDU:
        bus = await self._held_bus()
        s = self.settings
        return await bus.transact(
            s.unit_id, function, request, timeout_s=s.timeout_s, retries=s.retries
        )

    async def _read_block(self, block: ReadBlock) -> list[int]:
        unit = self.settings.unit_id
        start, count = block.start, block.count

        def request(client: AsyncModbusSerialClient) -> Awaitable[ModbusPDU]:
            readers = {
                "coil": client.read_coils,
                "discrete_input": client.read_discrete_inputs,
                "holding_register": client.read_holding_registers,
                "input_register": client.read_input_registers,
            }
            return readers[block.table](start, count=count, device_id=unit)

        function = _READ_FUNCTION[block.table]
        response = await self._call(function, request)
        if function in (1, 2):
            bits = list(response.bits)
            if len(bits) < count:  # answers are padded to whole bytes
                raise ProtocolError(f"asked {count} bits from {start}, got {len(bits)}")
            return [int(bit) for bit in bits[:count]]
        registers = list(response.registers)
        if len(registers) != count:
            raise ProtocolError(f"asked {count} registers from {start}, got {len(registers)}")
        return registers
