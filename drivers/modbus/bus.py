"""One RS-485 line shared by several Modbus RTU devices: one client, one lock, one gap.

On a serial bus only one request may be in flight, whichever device it is for. Every
:class:`~drivers.modbus.rtu.ModbusRtuDriver` on a port therefore shares one
:class:`ModbusSerialBus`: one pymodbus ``AsyncModbusSerialClient``, one ``asyncio.Lock`` held
for each transaction, and the inter-frame silence (3.5 character times by default) kept between
transactions. There is no thread and no client per device.

Buses live in a registry of the running event loop, found by any name of the port: the
configured path, the ``serial=<number>`` the adapter was named by, or the device it resolved to
(:mod:`drivers.serial_ports`), so drivers naming one adapter differently still share it.
:func:`acquire_bus` counts users and :func:`release_bus` closes the port when the last one
leaves. Drivers on one bus must agree on the line settings (speed, framing).

Recovery without a restart: the client is opened on demand and dropped when the port closes
under it (adapter unplugged, pseudo-terminal gone); the next transaction resolves the port again
(its by-id link or serial number may now lead to another device) and reopens it. A timeout, a
garbled answer or an exception answer leaves the port open; the next request is sent once the
line has been quiet for the inter-frame gap.

Answers are checked on the wire too: pymodbus drops a frame whose CRC is wrong and waits on, so
this module watches the bytes received (``trace_packet``) and reports a CRC failure at once, and
bytes that never form a valid answer (garbage, a truncated frame) at the timeout, as
:class:`~drivers.errors.ProtocolError` rather than :class:`~drivers.errors.DriverTimeout`.
Each attempt has its own timeout and the retries are made here (with the gap before each), so
devices on one line may have different timeouts.
"""

from __future__ import annotations

import asyncio
import termios
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from pymodbus import ExceptionResponse, ModbusException
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException
from pymodbus.framer import FramerRTU, FramerType
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.errors import (
    ConfigurationError,
    ConnectError,
    DeviceException,
    DriverError,
    DriverTimeout,
    ProtocolError,
)
from drivers.modbus.rtu_settings import ModbusRtuSettings
from drivers.serial_ports import SerialPortIdentity, resolve_serial_port

__all__ = ["ModbusSerialBus", "Request", "acquire_bus", "open_buses", "release_bus"]

log = structlog.get_logger(__name__)

#: A request to run on the bus's client, e.g. ``lambda c: c.read_coils(0, count=2, device_id=3)``.
Request = Callable[[AsyncModbusSerialClient], Awaitable[ModbusPDU]]

# pymodbus's own answer timeout is kept out of the way (attempts are timed here, per device)
_CLIENT_TIMEOUT_S = 60.0
_HEX_SHOWN = 32  # bytes of a garbled answer quoted in an error


@dataclass(frozen=True, slots=True)
class _Line:
    baudrate: int
    bytesize: int
    parity: str
    stopbits: int

    @classmethod
    def of(cls, settings: ModbusRtuSettings) -> _Line:
        return cls(settings.baudrate, settings.bytesize, settings.parity, settings.stopbits)

    def __str__(self) -> str:
        return f"{self.baudrate}-{self.bytesize}{self.parity}{self.stopbits}"


class ModbusSerialBus:
    """The shared state of one serial line. Get one with :func:`acquire_bus`."""

    def __init__(self, settings: ModbusRtuSettings) -> None:
        self._spec = settings
        self.line = _Line.of(settings)
        #: Silence kept between frames; the largest any user of the bus asked for.
        self.frame_gap_s = settings.frame_gap_s
        #: The device the port resolved to at the last (re)open.
        self.identity: SerialPortIdentity | None = None
        self.users = 0
        self._keys: set[tuple[str, str]] = {_spec_key(settings)}
        self._lock = asyncio.Lock()
        self._client: AsyncModbusSerialClient | None = None
        self._lost = asyncio.Event()
        self._garbled = asyncio.Event()
        self._checker = FramerRTU(DecodePDU(False))
        self._rx = b""  # what arrived during the attempt in flight
        self._quiet_since = 0.0  # monotonic time of the last byte on the line
        self._attempting = False

    @property
    def name(self) -> str:
        """The port as its first user named it, with the line settings."""
        return f"{self._spec.port_label}?{self.line}"

    @property
    def connected(self) -> bool:
        """True while the port is open (it may still turn out gone)."""
        return self._client is not None and self._client.connected

    async def open(self) -> None:
        """Open the port now if it is not open; :class:`ConnectError` if it cannot be."""
        async with self._lock:
            await self._open_client()

    async def transact(
        self,
        unit_id: int,
        function: int,
        request: Request,
        *,
        timeout_s: float,
        retries: int,
    ) -> ModbusPDU:
        """Run one request for ``unit_id`` alone on the line; translate every failure.

        Re-sends after no answer or a garbled one (``retries`` times). Raises
        :class:`ConnectError`, :class:`DriverTimeout`, :class:`ProtocolError` or
        :class:`DeviceException`.
        """
        where = f"modbus-rtu://{self.name}/{unit_id} function {function}"
        async with self._lock:
            client = await self._open_client()
            failure: DriverError | None = None
            for _ in range(retries + 1):
                await self._wait_quiet()
                try:
                    response = await self._attempt(client, request, timeout_s, where)
                except (DriverTimeout, ProtocolError) as exc:
                    failure = exc
                    continue
                return self._checked(response, function, where)
            assert failure is not None  # the loop ran at least once
            log.debug("modbus-rtu request failed", where=where, error=str(failure))
            raise failure

    async def aclose(self) -> None:
        """Close the port (the registry does this when the last user releases the bus)."""
        async with self._lock:
            self._drop()

    # -- internals ----------------------------------------------------------------------

    async def _open_client(self) -> AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        spec = self._spec
        identity = resolve_serial_port(port=spec.port, serial_number=spec.serial_number)
        lost = asyncio.Event()

        def on_connection(connected: bool) -> None:
            if not connected:
                lost.set()

        client = AsyncModbusSerialClient(
            identity.device,
            framer=FramerType.RTU,
            baudrate=spec.baudrate,
            bytesize=spec.bytesize,
            parity=spec.parity,
            stopbits=spec.stopbits,
            name=self.name,
            reconnect_delay=0,  # no background reconnection: the next transaction reopens
            timeout=_CLIENT_TIMEOUT_S,
            retries=0,
            trace_packet=self._on_packet,
            trace_connect=on_connection,
        )
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise ConnectError(f"cannot open {identity.label}: {exc}") from exc
        except termios.error as exc:  # not an OSError: tcsetattr refused the line settings
            client.close()
            raise ConnectError(
                f"cannot open {identity.label}: the port refuses the line settings "
                f"{self.line} ({_termios_detail(exc)})"
            ) from exc
        except Exception:
            client.close()  # the driver boundary translates it; never leave the port half open
            raise
        if not ok:
            client.close()
            raise ConnectError(f"cannot open {identity.label} (busy, gone or not a tty)")
        self._client, self._lost, self.identity = client, lost, identity
        self._keys.add(("device", identity.device))
        self._quiet_since = time.monotonic()
        log.info("serial port opened", port=identity.label, line=str(self.line))
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._lost.set()
        if client is not None:
            client.close()
            log.info("serial port closed", port=self.name)

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's trace hook: every frame sent, the receive buffer on each arrival."""
        self._quiet_since = time.monotonic()
        if sending or not self._attempting:
            return data
        self._rx = data
        used, _unit, _tid, frame = self._checker.decode(data)
        if used and not frame:  # a whole frame whose CRC is wrong
            self._garbled.set()
        return data

    async def _wait_quiet(self) -> None:
        """Keep the inter-frame silence: protocol timing, not a pause to let things settle."""
        delay = self._quiet_since + self.frame_gap_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _attempt(
        self, client: AsyncModbusSerialClient, request: Request, timeout_s: float, where: str
    ) -> ModbusPDU:
        lost = self._lost
        if lost.is_set():
            self._drop()
            raise ConnectError(f"{where}: serial port closed")
        self._rx, self._garbled = b"", asyncio.Event()
        garbled = self._garbled
        self._attempting = True
        pending = asyncio.ensure_future(request(client))
        watchers = {asyncio.ensure_future(lost.wait()), asyncio.ensure_future(garbled.wait())}
        try:
            await asyncio.wait(
                {pending, *watchers}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # stopped mid-transaction: close the port so the answer still on its way never
            # reaches pymodbus without its request, nor meets another unit's request
            self._drop()
            raise
        finally:
            self._attempting = False
            self._quiet_since = time.monotonic()
            for watcher in watchers:
                watcher.cancel()
            if not pending.done():
                pending.cancel()
                await asyncio.wait({pending})
        if pending.done() and not pending.cancelled():
            return self._result(pending, where)
        if lost.is_set():
            self._drop()
            raise ConnectError(f"{where}: serial port closed or gone")
        if garbled.is_set():
            raise ProtocolError(f"{where}: answer with a wrong CRC: {_hex(self._rx)}")
        if self._rx:
            raise ProtocolError(
                f"{where}: no valid answer within {timeout_s}s, got {_hex(self._rx)}"
            )
        raise DriverTimeout(f"{where}: no answer within {timeout_s}s")

    def _result(self, pending: asyncio.Future[ModbusPDU], where: str) -> ModbusPDU:
        try:
            return pending.result()
        except ConnectionException as exc:
            self._drop()
            raise ConnectError(f"{where}: not connected ({exc})") from exc
        except ModbusException as exc:  # undecodable answer, wrong unit, ...
            raise ProtocolError(f"{where}: {exc}") from exc
        except OSError as exc:  # pyserial's SerialException is an OSError
            self._drop()
            raise ConnectError(f"{where}: {exc}") from exc
        except termios.error as exc:
            self._drop()
            raise ConnectError(f"{where}: the port failed: {_termios_detail(exc)}") from exc
        except Exception:
            self._drop()  # the port's state is unknown; the driver boundary translates it
            raise

    @staticmethod
    def _checked(response: ModbusPDU, function: int, where: str) -> ModbusPDU:
        if isinstance(response, ExceptionResponse):
            raise DeviceException(response.exception_code, response.function_code & 0x7F)
        if response.isError() or response.function_code != function:
            raise ProtocolError(f"{where}: unexpected answer {response}")
        return response

    def __repr__(self) -> str:
        return f"<ModbusSerialBus {self.name} users={self.users}>"


# -- the registry ---------------------------------------------------------------------------

_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[ModbusSerialBus]] = (
    weakref.WeakKeyDictionary()
)


def _spec_key(settings: ModbusRtuSettings) -> tuple[str, str]:
    if settings.port is not None:
        return ("port", settings.port)
    return ("serial", str(settings.serial_number))


def open_buses() -> list[ModbusSerialBus]:
    """The buses in use in the running event loop."""
    return list(_registries.get(asyncio.get_running_loop(), []))


async def acquire_bus(settings: ModbusRtuSettings) -> ModbusSerialBus:
    """The bus of the port ``settings`` name, shared with its other users; count one more.

    Raises :class:`ConnectError` (``SerialPortNotFound``) when the port is absent and no bus
    holds it yet, :class:`ConfigurationError` when the bus runs other line settings.
    """
    buses = _registries.setdefault(asyncio.get_running_loop(), [])
    key = _spec_key(settings)
    bus = next((b for b in buses if key in b._keys), None)
    if bus is None:
        identity = resolve_serial_port(port=settings.port, serial_number=settings.serial_number)
        device = ("device", identity.device)
        bus = next((b for b in buses if device in b._keys), None)
        if bus is None:
            bus = ModbusSerialBus(settings)
            bus._keys.add(device)
            buses.append(bus)
    line = _Line.of(settings)
    if line != bus.line:
        if bus.users == 0:
            buses.remove(bus)
        raise ConfigurationError(
            f"{settings.endpoint}: the port is in use at {bus.line}, not {line} "
            "(devices on one line share its speed and framing)"
        )
    bus._keys.add(key)
    bus.frame_gap_s = max(bus.frame_gap_s, settings.frame_gap_s)
    bus.users += 1
    return bus


async def release_bus(bus: ModbusSerialBus) -> None:
    """Count one user less; the last one closes the port and forgets the bus."""
    bus.users -= 1
    if bus.users > 0:
        return
    buses = _registries.get(asyncio.get_running_loop(), [])
    if bus in buses:
        buses.remove(bus)
    await bus.aclose()


def _hex(data: bytes) -> str:
    shown = data[:_HEX_SHOWN].hex(" ")
    return shown + (" ..." if len(data) > _HEX_SHOWN else "") if data else "nothing"


def _termios_detail(exc: termios.error) -> str:
    """``termios.error`` carries ``(errno, strerror)``; say it as ``[Errno 22] Invalid argument``."""
    if len(exc.args) == 2 and isinstance(exc.args[0], int):
        return f"[Errno {exc.args[0]}] {exc.args[1]}"
    return str(exc) or "termios.error"
