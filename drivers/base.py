"""The driver interface: connect, read points, write a point; nothing else.

A driver does I/O only. It reads and writes *raw* values (decoded by data type, not scaled);
scaling, deadbands, scheduling and the validation of commands belong to the agent. Every
failure is a :class:`~drivers.errors.DriverError`.

A driver is a reusable, non-reentrant async context manager::

    async with open_driver(profile, settings) as driver:
        raw = await driver.read(["voltage", "dimming"])
        await driver.write("dimming", 40)

``read`` and ``write`` (re)connect on demand, so a driver whose connection broke works again
on the next call, and one may also be used without ``async with`` (call ``close()`` at the end).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from device_profiles import DeviceProfile, Point, Value
from drivers.errors import ConfigurationError

__all__ = ["Driver"]


class Driver(abc.ABC):
    """Base class of the drivers of every transport."""

    def __init__(self, profile: DeviceProfile) -> None:
        self._profile = profile
        self._entered = False

    @property
    def profile(self) -> DeviceProfile:
        """The device type this driver reads and writes."""
        return self._profile

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """Where the device is, for logs: ``modbus-tcp://10.0.3.17:502/1``."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect now; :class:`~drivers.errors.ConnectError` if the device is unreachable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection. Idempotent; the driver may be connected again afterwards."""

    @abc.abstractmethod
    async def read(self, names: Sequence[str]) -> dict[str, Value]:
        """Raw values of the named points, in the order asked (duplicates read once)."""

    @abc.abstractmethod
    async def write(self, name: str, raw: Value) -> None:
        """Write the raw value of one writable point."""

    def point(self, name: str) -> Point:
        """The profile's point ``name``; :class:`ConfigurationError` if there is none."""
        point = self._profile.points.get(name)
        if point is None:
            raise ConfigurationError(f"profile '{self._profile.name}' has no point '{name}'")
        return point

    def writable_point(self, name: str) -> Point:
        """The point ``name`` if the profile declares it writable, else ConfigurationError."""
        point = self.point(name)
        if not point.writable:
            raise ConfigurationError(
                f"point '{name}' of profile '{self._profile.name}' is not writable"
            )
        return point

    async def __aenter__(self) -> Self:
        if self._entered:
            raise ConfigurationError(f"{self!r} is already open (drivers are not reentrant)")
        await self.connect()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._entered = False
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._profile.name} {self.endpoint}>"
