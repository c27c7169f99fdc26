"""Serve register images over Modbus RTU on a pseudo-terminal: a simulated RS-485 line.

Several devices share the line (multi-drop), each a :class:`RegisterImage` answering as its own
unit id; requests to other unit ids get no answer, as on a real bus, and broadcasts (unit 0)
are executed by every device without an answer. Clients open :attr:`ModbusRtuSimServer.port_path`
(a stable symlink to ``/dev/pts/N``, see :class:`~firmware_sim.serial_link.PtyLink`) with any
RTU master: our driver, pymodbus, ``mbpoll -m rtu``::

    async with ModbusRtuSimServer({3: meter_image, 5: gate_image}) as server:
        server.port_path          # /tmp/iot-serial-xxxx/ttySIM0
        server.faults.inject(Fault.no_reply, unit_id=3)

Everything runs in the caller's event loop: the master side is read with ``add_reader`` and
framed by pymodbus's RTU framer (CRC-16/MODBUS), requests are executed by pymodbus's PDU classes
against the same ``SimDevice`` datastores the TCP server uses (through pymodbus's ``SimCore``),
one at a time in arrival order, like a device's UART. Answers go out as soon as they are
computed (no baud-rate pacing). :attr:`traffic` logs each request and answer (bounded),
:attr:`writes` each point a client wrote, :attr:`faults` injects faults (:mod:`firmware_sim.faults`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.simulator.simcore import SimCore

from device_profiles import load_builtin_profile
from firmware_sim.faults import (
    Fault,
    FaultInjector,
    FaultRule,
    TrafficLog,
    corrupt_crc,
    garbage_bytes,
    truncate,
)
from firmware_sim.register_image import RegisterImage, WriteRecord
from firmware_sim.serial_link import PtyLink
from firmware_sim.smart_pole import SmartPoleModel, SmartPoleViews
from firmware_sim.ticking import ticking

__all__ = [
    "ModbusRtuSimServer",
    "RtuLineViews",
    "SmartPoleRtuSim",
    "UnitWrite",
    "run_smart_pole_rtu",
]

log = structlog.get_logger(__name__)

_READ_SIZE = 4096
_MAX_BUFFER = 2 * 256  # an RTU frame is at most 256 bytes; more unframed bytes are noise


@dataclass(frozen=True, slots=True)
class UnitWrite:
    """A point written by a client, with the unit id it was written to."""

    unit_id: int
    record: WriteRecord


class ModbusRtuSimServer:
    """A Modbus RTU line with the devices ``devices`` (unit id -> image) on it."""

    def __init__(
        self,
        devices: Mapping[int, RegisterImage],
        *,
        name: str = "ttySIM0",
        directory: str | None = None,
        seed: int | None = 0,
        log_size: int = 256,
    ) -> None:
        if not devices:
            raise ValueError("put at least one device on the line")
        for unit in devices:
            if not 1 <= unit <= 247:
                raise ValueError(f"unit ids are 1-247, got {unit}")
        self.devices: dict[int, RegisterImage] = dict(devices)
        self.link = PtyLink(name=name, directory=directory)
        self.faults = FaultInjector(seed=seed, size=log_size)
        self.traffic = TrafficLog(size=log_size)
        self._writes: list[UnitWrite] = []
        for unit, image in self.devices.items():
            image.add_listener(self._writes_of(unit))
        self._framer = FramerRTU(DecodePDU(True))
        self._core: SimCore | None = None
        self._buffer = b""
        self._queue: asyncio.Queue[tuple[int, ModbusPDU]] = asyncio.Queue()
        self._generation = 0  # counts hang-ups: answers never cross into a new line
        self._worker: asyncio.Task[None] | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def port_path(self) -> str:
        """The path clients open (a symlink that survives restarts)."""
        return self.link.path

    @property
    def device_path(self) -> str:
        """The pseudo-terminal behind :attr:`port_path` now (``/dev/pts/7``)."""
        return self.link.device

    @property
    def endpoint(self) -> str:
        return f"modbus-rtu://{self.port_path}"

    @property
    def unit_ids(self) -> tuple[int, ...]:
        return tuple(self.devices)

    @property
    def running(self) -> bool:
        return self._worker is not None

    @property
    def writes(self) -> list[UnitWrite]:
        """Every point clients wrote, oldest first, with its unit id."""
        return list(self._writes)

    def image(self, unit_id: int) -> RegisterImage:
        """The register image answering as ``unit_id``."""
        try:
            return self.devices[unit_id]
        except KeyError:
            raise KeyError(f"no unit {unit_id} on {self.port_path}") from None

    async def start(self) -> None:
        """Create the line and serve (returns at once). No-op when running."""
        if self._worker is not None:
            return
        self._core = SimCore([image.sim_device(unit) for unit, image in self.devices.items()])
        self._queue = asyncio.Queue()
        self._open_link()
        self._worker = asyncio.create_task(self._serve(), name=f"modbus-rtu {self.port_path}")
        log.info("modbus rtu server listening", path=self.port_path, units=self.unit_ids)

    async def stop(self) -> None:
        """Stop serving and remove the line. Idempotent."""
        worker, self._worker = self._worker, None
        self._close_link()
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
            await asyncio.wait([worker])
        self.link.close()
        if worker is not None:
            log.info("modbus rtu server stopped", path=self.port_path)

    async def restart(self) -> None:
        """Hang the line up and bring it back (same :attr:`port_path`, a new pty)."""
        self._close_link()
        if self._worker is not None:
            self._open_link()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- the line -------------------------------------------------------------------------

    def _writes_of(self, unit: int) -> Callable[[WriteRecord], None]:
        def listener(record: WriteRecord) -> None:
            self._writes.append(UnitWrite(unit, record))

        return listener

    def _open_link(self) -> None:
        self.link.open()
        self._buffer = b""
        asyncio.get_running_loop().add_reader(self.link.master_fd, self._on_readable)

    def _close_link(self) -> None:
        self._generation += 1
        while not self._queue.empty():  # requests heard on the old line die with it
            self._queue.get_nowait()
        if self.link.is_open:
            asyncio.get_running_loop().remove_reader(self.link.master_fd)
            self.link.hangup()

    def _on_readable(self) -> None:
        try:
            data = os.read(self.link.master_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:  # the pty is gone (never while we hold a slave fd open)
            log.warning("modbus rtu line read failed", path=self.port_path, error=str(exc))
            self._close_link()
            return
        self._buffer += data
        while self._buffer:
            try:
                used, pdu = self._framer.handleFrame(self._buffer, 0, 0)
            except ModbusIOException as exc:  # a well-framed request pymodbus cannot decode
                self._buffer = b""
                self._refuse_undecodable(exc)
                return
            self._buffer = self._buffer[used:]
            if pdu is None:
                break
            self._queue.put_nowait((self._generation, pdu))
        if len(self._buffer) > _MAX_BUFFER:
            self._buffer = b""

    def _refuse_undecodable(self, exc: ModbusIOException) -> None:
        unit = int(exc.dev_id or 0)
        if unit in self.devices:
            answer = ExceptionResponse(0, ExcCodes.ILLEGAL_FUNCTION, device_id=unit)
            self._send(self._framer.buildFrame(answer))

    def _send(self, frame: bytes) -> bool:
        if not self.link.is_open:
            return False
        try:
            written = os.write(self.link.master_fd, frame)
        except OSError as exc:  # full (nobody reads the line) or gone
            log.warning("modbus rtu answer lost", path=self.port_path, error=str(exc))
            return False
        return written == len(frame)

    # -- requests -------------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            generation, request = await self._queue.get()
            await self._handle(request, generation)

    async def _handle(self, request: ModbusPDU, generation: int) -> None:
        unit, function = request.dev_id, request.function_code
        request_frame = self._framer.buildFrame(request)
        if unit == 0:  # broadcast: every device executes, none answers
            self.traffic.add("request", unit, function, request_frame)
            for device in self.devices:
                await self._execute(request, device)
            return
        if unit not in self.devices:
            return  # another device's request: stay silent
        rule = self.faults.take(unit)
        fault = rule.fault if rule is not None else None
        self.traffic.add("request", unit, function, request_frame, fault)
        if rule is not None and not rule.fault.executes:
            await self._refuse(rule, unit, function, generation)
            return
        answer = self._framer.buildFrame(await self._execute(request, unit))
        if rule is None:
            self._answer(unit, function, answer, generation)
            return
        if rule.fault == Fault.delay:
            await asyncio.sleep(rule.delay_s)  # the device is slow: the fault's very purpose
        elif rule.fault == Fault.corrupt_frame:
            answer = corrupt_crc(answer)
        elif rule.fault == Fault.truncated:
            answer = truncate(answer)
        elif rule.fault == Fault.garbage:
            answer = garbage_bytes(self.faults.rng, len(answer), rtu=True)
        self._answer(unit, function, answer, generation, rule.fault)
        self.faults.note_applied(rule.fault, unit, function)

    async def _refuse(self, rule: FaultRule, unit: int, function: int, generation: int) -> None:
        if rule.fault == Fault.exception:
            answer = ExceptionResponse(function, rule.code, device_id=unit)
            frame = self._framer.buildFrame(answer)
            self._answer(unit, function, frame, generation, rule.fault)
        elif rule.fault in (Fault.disconnect, Fault.restart):
            await self.restart()
        self.faults.note_applied(rule.fault, unit, function)

    async def _execute(self, request: ModbusPDU, unit: int) -> ModbusPDU:
        assert self._core is not None  # set by start()
        try:
            response = await request.datastore_update(self._core, unit)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - a datastore bug answers like a device would
            log.error("modbus rtu request failed", unit=unit, request=str(request), error=str(exc))
            response = ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        response.dev_id = unit
        return response

    def _answer(
        self, unit: int, function: int, frame: bytes, generation: int, fault: Fault | None = None
    ) -> None:
        if generation == self._generation and self._send(frame):
            self.traffic.add("answer", unit, function, frame, fault)


# -- running simulators on the line --------------------------------------------------------


class RtuLineViews:
    """Accessors of a running simulator on a simulated line (a frozen dataclass with a
    ``server`` field): the smart pole over RTU and the gateway bus."""

    __slots__ = ()

    server: ModbusRtuSimServer

    @property
    def port_path(self) -> str:
        return self.server.port_path

    @property
    def devices(self) -> dict[int, RegisterImage]:
        """Unit id -> image."""
        return self.server.devices

    @property
    def faults(self) -> FaultInjector:
        return self.server.faults

    @property
    def traffic(self) -> TrafficLog:
        return self.server.traffic


@dataclass(frozen=True, slots=True)
class SmartPoleRtuSim(SmartPoleViews, RtuLineViews):
    """A running smart pole simulator on a simulated RS-485 line (``writes``, ``profile``:
    :class:`SmartPoleViews`; ``port_path``, ``devices``, ``faults``, ``traffic``:
    :class:`RtuLineViews`)."""

    server: ModbusRtuSimServer
    image: RegisterImage
    model: SmartPoleModel
    unit_id: int


@asynccontextmanager
async def run_smart_pole_rtu(
    *,
    seed: int | None = None,
    unit_id: int = 1,
    tick_s: float | None = 1.0,
    clock: Callable[[], float] = time.time,
    utc_offset_h: float = 0.0,
    name: str = "ttyPOLE0",
    directory: str | None = None,
) -> AsyncIterator[SmartPoleRtuSim]:
    """Serve a simulated smart pole over Modbus RTU on a pseudo-terminal until the block exits.

    ``tick_s=None`` never ticks on its own (call ``sim.model.step()``); writes act at once.
    """
    image = RegisterImage(load_builtin_profile("smart_pole"), clock=clock)
    model = SmartPoleModel(image, seed=seed, clock=clock, utc_offset_h=utc_offset_h)
    server = ModbusRtuSimServer({unit_id: image}, name=name, directory=directory, seed=seed)
    async with server, ticking(model.run, tick_s, name="smart_pole rtu tick"):
        yield SmartPoleRtuSim(server=server, image=image, model=model, unit_id=unit_id)
