"""Modbus RTU driver: one device (unit id) on a shared serial bus.

The points to read are planned into the same coalesced blocks as over TCP
(:func:`drivers.modbus.plan.plan_reads`, the same ``max_gap``) and decoded with the same codec;
on a serial line coalescing matters most (at 9600 Bd one 125-register read moves ~400
registers/s against ~40 for single-register reads). The requests a read or a write sends are
the same as over TCP (:mod:`drivers.modbus.requests`).

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
from collections.abc import Sequence

import structlog
from pymodbus.pdu import ModbusPDU

from device_profiles import DeviceProfile, Value
from drivers.base import Driver
from drivers.errors import DriverError
from drivers.modbus.bus import ModbusSerialBus, Request, acquire_bus, release_bus
from drivers.modbus.plan import PlanCache
from drivers.modbus.requests import ModbusWrite, read_points
from drivers.modbus.rtu_settings import ModbusRtuSettings

__all__ = ["ModbusRtuDriver"]

log = structlog.get_logger(__name__)


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

    async def _connect(self) -> None:
        async with self._lock:
            bus = await self._held_bus()
            try:
                await bus.open()
            except DriverError:
                self._bus = None  # async with never reaches __aexit__: let go of the bus now
                await release_bus(bus)
                raise

    async def _close(self) -> None:
        async with self._lock:
            bus, self._bus = self._bus, None
            if bus is not None:
                await release_bus(bus)

    async def _read(self, names: Sequence[str]) -> dict[str, Value]:
        points = {name: self.point(name) for name in dict.fromkeys(names)}
        if not points:
            return {}
        async with self._lock:
            return await read_points(
                self._call, self.settings.unit_id, points, self._plans.blocks(points)
            )

    async def _write(self, name: str, raw: Value) -> None:
        write = ModbusWrite.encode(name, self.writable_point(name), raw)  # check early
        async with self._lock:
            await write.run(self._call, self.settings.unit_id)
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
