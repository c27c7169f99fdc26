"""An in-memory driver for testing what sits above the drivers (the agent's poller, commands).

It behaves like a real driver where the agent can tell: raw values are encoded with the
Modbus codec (a wrong raw type raises the same :class:`~drivers.errors.EncodeError`), unknown
and read-only points are refused, errors are :class:`~drivers.errors.DriverError`. It records
every write and can be told to fail::

    driver = FakeDriver(profile, {"voltage": 2301})
    driver.fail_next_read(DriverTimeout("no answer"))
    driver.fail_next_read(RuntimeError("a bug"))  # any exception: the driver boundary wraps it
    driver.offline = True   # every call raises ConnectError until set back to False
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from device_profiles import DeviceProfile, Point, Value
from drivers.base import Driver
from drivers.errors import ConnectError
from drivers.modbus.codec import encode

__all__ = ["FakeDriver", "FakeWrite"]

_ZERO: dict[str, Value] = {"bool": False, "string": "", "float32": 0.0, "float64": 0.0}


@dataclass(frozen=True, slots=True)
class FakeWrite:
    """One write the fake received."""

    name: str
    raw: Value


class FakeDriver(Driver):
    """A device in memory: ``values`` holds the raw value of every point of the profile."""

    def __init__(
        self,
        profile: DeviceProfile,
        values: Mapping[str, Value] | None = None,
        *,
        endpoint: str = "fake://device",
    ) -> None:
        super().__init__(profile)
        self._endpoint = endpoint
        self.values: dict[str, Value] = {
            name: _ZERO.get(point.type, 0) for name, point in profile.points.items()
        }
        for name, raw in (values or {}).items():
            self.set(name, raw)
        #: Every successful write, in order.
        self.writes: list[FakeWrite] = []
        #: The names of every successful read, in order.
        self.reads: list[tuple[str, ...]] = []
        #: While True, connect/read/write raise ConnectError (a device switched off).
        self.offline = False
        self.connected = False
        self.connects = 0
        self._read_errors: deque[Exception] = deque()
        self._write_errors: deque[Exception] = deque()

    @property
    def endpoint(self) -> str:
        return self._endpoint

    # -- test controls ------------------------------------------------------------------

    def set(self, name: str, raw: Value) -> None:
        """Set a point's raw value, as the device would (any point, writable or not)."""
        _check_raw(self.point(name), raw)
        self.values[name] = raw

    def fail_next_read(self, error: Exception, times: int = 1) -> None:
        """Make the next ``times`` reads raise ``error`` (one that is not a DriverError comes
        out as :class:`~drivers.errors.UnexpectedDriverError`, as from any driver)."""
        self._read_errors.extend([error] * times)

    def fail_next_write(self, error: Exception, times: int = 1) -> None:
        """Make the next ``times`` writes raise ``error`` (nothing is written)."""
        self._write_errors.extend([error] * times)

    # -- Driver -------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self.offline:
            self.connected = False
            raise ConnectError(f"{self._endpoint} is offline")
        if not self.connected:
            self.connected = True
            self.connects += 1

    async def _close(self) -> None:
        self.connected = False

    async def _read(self, names: Sequence[str]) -> dict[str, Value]:
        wanted = list(dict.fromkeys(names))
        for name in wanted:
            self.point(name)
        await self.connect()
        if self._read_errors:
            raise self._read_errors.popleft()
        self.reads.append(tuple(wanted))
        return {name: self.values[name] for name in wanted}

    async def _write(self, name: str, raw: Value) -> None:
        _check_raw(self.writable_point(name), raw)
        await self.connect()
        if self._write_errors:
            raise self._write_errors.popleft()
        self.values[name] = raw
        self.writes.append(FakeWrite(name, raw))


def _check_raw(point: Point, raw: Value) -> None:
    """Raise EncodeError exactly where the Modbus codec would."""
    current = None if point.modbus.is_bit_table or point.type != "bool" else [0]
    encode(point, raw, current=current)
