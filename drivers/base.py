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

This class is the driver boundary. A transport implements ``_connect``, ``_close``, ``_read``
and ``_write``; the public methods run them and let no exception but a
:class:`~drivers.errors.DriverError` out: the transports translate the failures they know
(``raise ConnectError(...) from exc``), and anything else (a library's exception that was not
foreseen, ``termios.error``, a bug) becomes :class:`~drivers.errors.UnexpectedDriverError`
with the original chained, so one device's failure of any kind stays that device's failure.
Cancellation is never translated.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Self, final

from device_profiles import DeviceProfile, Point, Value
from drivers.errors import ConfigurationError, DriverError, UnexpectedDriverError

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

    @final
    async def connect(self) -> None:
        """Connect now; :class:`~drivers.errors.ConnectError` if the device is unreachable."""
        with self._boundary("connect"):
            await self._connect()

    @final
    async def close(self) -> None:
        """Close the connection. Idempotent; the driver may be connected again afterwards."""
        with self._boundary("close"):
            await self._close()

    @final
    async def read(self, names: Sequence[str]) -> dict[str, Value]:
        """Raw values of the named points, in the order asked (duplicates read once)."""
        with self._boundary("read"):
            return await self._read(names)

    @final
    async def write(self, name: str, raw: Value) -> None:
        """Write the raw value of one writable point."""
        with self._boundary(f"write {name}"):
            await self._write(name, raw)

    # -- what a transport implements ----------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Connect now, translating the transport's failures into DriverErrors."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close the connection (idempotent)."""

    @abc.abstractmethod
    async def _read(self, names: Sequence[str]) -> dict[str, Value]:
        """Raw values of the named points, in the order asked (duplicates read once)."""

    @abc.abstractmethod
    async def _write(self, name: str, raw: Value) -> None:
        """Write the raw value of one writable point."""

    @contextmanager
    def _boundary(self, action: str) -> Iterator[None]:
        """Let only DriverErrors out (and cancellation, untouched)."""
        try:
            yield
        except DriverError:
            raise
        except Exception as exc:
            raise UnexpectedDriverError(self.endpoint, action, exc) from exc

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
