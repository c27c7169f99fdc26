"""Fault injection and a bounded traffic log for the Modbus simulators (TCP and RTU).

One small API on both servers (``server.faults``), applied to the next requests as they come::

    sim.faults.inject(Fault.no_reply, count=3)             # the next 3 requests, any unit
    sim.faults.inject(Fault.exception, code=6, unit_id=3)  # unit 3 answers SERVER DEVICE BUSY
    sim.faults.inject(Fault.delay, delay_s=0.5, count=None)  # every request, until cleared
    sim.faults.clear()
    await sim.faults.wait_applied(Fault.restart)          # the restart is over

What each fault does (the request is executed unless said otherwise):

=================  ==========================================================================
``no_reply``       the request is lost: not executed, no answer
``delay``          the answer leaves ``delay_s`` later (applied once it has left)
``exception``      not executed; an exception answer with ``code``
``corrupt_frame``  the answer's CRC is wrong (RTU) / its MBAP header is broken (TCP)
``truncated``      the answer is cut short
``garbage``        random bytes (never a valid frame) instead of the answer
``disconnect``     not executed; TCP: the connection is closed; RTU: the port vanishes and
                   comes back (an adapter unplugged and plugged in again)
``restart``        not executed; the server stops and starts again on the same port / path
=================  ==========================================================================

Rules are matched in the order injected; a rule with ``unit_id`` only hits that unit. The
servers record every request and answer in a :class:`TrafficLog` (bounded) and every fault
applied in :attr:`FaultInjector.applied`. Everything here is deterministic for a ``seed``.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimDevice

__all__ = [
    "AppliedFault",
    "Fault",
    "FaultInjector",
    "FaultRule",
    "FaultyTcpServer",
    "TrafficLog",
    "TrafficRecord",
    "corrupt_crc",
    "corrupt_mbap",
    "garbage_bytes",
    "truncate",
]

_LOG_SIZE = 256


class Fault(enum.StrEnum):
    """What can go wrong with a request (see the module docstring)."""

    no_reply = "no_reply"
    delay = "delay"
    exception = "exception"
    corrupt_frame = "corrupt_frame"
    truncated = "truncated"
    garbage = "garbage"
    disconnect = "disconnect"
    restart = "restart"

    @property
    def executes(self) -> bool:
        """Whether the device still executes the request (only the answer suffers)."""
        return self in (Fault.delay, Fault.corrupt_frame, Fault.truncated, Fault.garbage)


@dataclass(slots=True)
class FaultRule:
    """One injected fault: ``remaining`` requests to hit (None: until cleared)."""

    fault: Fault
    remaining: int | None = 1
    unit_id: int | None = None
    delay_s: float = 0.5
    code: int = 4

    def matches(self, unit_id: int) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            self.unit_id is None or self.unit_id == unit_id
        )


@dataclass(frozen=True, slots=True)
class AppliedFault:
    """A fault that took effect on one request."""

    ts: float
    fault: Fault
    unit_id: int
    function: int


@dataclass(frozen=True, slots=True)
class TrafficRecord:
    """One frame on the wire, as the simulator saw it (``request``) or sent it (``answer``)."""

    ts: float
    direction: Literal["request", "answer"]
    unit_id: int
    function: int
    frame: bytes
    fault: Fault | None = None


@dataclass(slots=True)
class TrafficLog:
    """The last ``size`` requests and answers of a simulator, oldest first."""

    size: int = _LOG_SIZE
    clock: Callable[[], float] = time.time
    _records: deque[TrafficRecord] = field(init=False)

    _totals: Counter[tuple[str, int]] = field(init=False)

    def __post_init__(self) -> None:
        self._records = deque(maxlen=self.size)
        self._totals = Counter()

    def total(self, direction: Literal["request", "answer"], function: int) -> int:
        """Frames of one function code seen since start (not bounded like the log)."""
        return self._totals[(direction, function)]

    def add(
        self,
        direction: Literal["request", "answer"],
        unit_id: int,
        function: int,
        frame: bytes,
        fault: Fault | None = None,
    ) -> None:
        self._records.append(
            TrafficRecord(self.clock(), direction, unit_id, function, bytes(frame), fault)
        )
        self._totals[(direction, function)] += 1

    @property
    def records(self) -> list[TrafficRecord]:
        return list(self._records)

    def requests(self, unit_id: int | None = None) -> list[TrafficRecord]:
        """The requests seen (of one unit), oldest first."""
        return [
            r
            for r in self._records
            if r.direction == "request" and (unit_id is None or r.unit_id == unit_id)
        ]

    def clear(self) -> None:
        self._records.clear()

    def __iter__(self) -> Iterator[TrafficRecord]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)


class FaultInjector:
    """The faults waiting for the next requests of one simulator, and those applied."""

    def __init__(
        self, *, seed: int | None = 0, clock: Callable[[], float] = time.time, size: int = _LOG_SIZE
    ) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - garbage bytes, not cryptography
        self.clock = clock
        self.rules: list[FaultRule] = []
        self._applied: deque[AppliedFault] = deque(maxlen=size)
        self._waiters: list[tuple[Fault, int, asyncio.Future[None]]] = []

    def inject(
        self,
        fault: Fault,
        *,
        count: int | None = 1,
        unit_id: int | None = None,
        delay_s: float = 0.5,
        code: int = 4,
    ) -> FaultRule:
        """Apply ``fault`` to the next ``count`` requests (None: all, until cleared)."""
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None, got {count}")
        if delay_s < 0 or not 1 <= code <= 255:
            raise ValueError(f"need delay_s >= 0 and 1 <= code <= 255 (got {delay_s}, {code})")
        rule = FaultRule(Fault(fault), count, unit_id, delay_s, code)
        self.rules.append(rule)
        return rule

    def clear(self, unit_id: int | None = None) -> None:
        """Forget the waiting faults (of one unit, or all)."""
        self.rules = [r for r in self.rules if unit_id is not None and r.unit_id != unit_id]

    def take(self, unit_id: int) -> FaultRule | None:
        """The fault for the request to ``unit_id`` arriving now, counted off its rule."""
        for rule in self.rules:
            if rule.matches(unit_id):
                if rule.remaining is not None:
                    rule.remaining -= 1
                self.rules = [r for r in self.rules if r.remaining != 0]
                return rule
        return None

    @property
    def applied(self) -> list[AppliedFault]:
        """The faults that took effect, oldest first (bounded)."""
        return list(self._applied)

    def note_applied(self, fault: Fault, unit_id: int, function: int) -> None:
        """Record that ``fault`` took effect (the servers call this)."""
        self._applied.append(AppliedFault(self.clock(), fault, unit_id, function))
        for wanted, count, waiter in self._waiters:
            if not waiter.done() and self.count(wanted) >= count:
                waiter.set_result(None)

    def count(self, fault: Fault) -> int:
        """How many times ``fault`` took effect (within the bounded history)."""
        return sum(1 for a in self._applied if a.fault == fault)

    async def wait_applied(self, fault: Fault, count: int = 1, *, timeout_s: float = 5.0) -> None:
        """Wait until ``fault`` took effect ``count`` times in all; TimeoutError otherwise."""
        if self.count(fault) >= count:
            return
        entry = (Fault(fault), count, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                await entry[2]
        finally:
            self._waiters.remove(entry)


# -- frame damage (pure functions) ----------------------------------------------------------

_rtu_checker = FramerRTU(DecodePDU(False))


def corrupt_crc(frame: bytes) -> bytes:
    """The RTU frame with its CRC inverted (so always wrong)."""
    if len(frame) < 3:
        raise ValueError("an RTU frame has at least an address and a CRC")
    return frame[:-2] + bytes(b ^ 0xFF for b in frame[-2:])


def corrupt_mbap(frame: bytes) -> bytes:
    """The Modbus TCP frame with a nonzero protocol id in its MBAP header."""
    if len(frame) < 8:
        raise ValueError("a Modbus TCP frame has a 7-byte MBAP header and a function code")
    return frame[:2] + b"\xde\xad" + frame[4:]


def truncate(frame: bytes) -> bytes:
    """The first half of ``frame`` (at least one byte, always shorter)."""
    return frame[: max(1, len(frame) // 2)]


def garbage_bytes(rng: random.Random, size: int, *, rtu: bool) -> bytes:
    """``size`` random bytes that never form a valid RTU frame / Modbus TCP header."""
    size = max(size, 8)
    while True:
        data = bytearray(rng.randbytes(size))
        if not rtu:
            data[2] |= 0x80  # protocol id != 0: no MBAP header
            return bytes(data)
        _used, _unit, _tid, frame = _rtu_checker.decode(bytes(data))
        if not frame:
            return bytes(data)


# -- the Modbus TCP server's hooks ----------------------------------------------------------


class _Refused(ModbusPDU):
    """Stands in for a request the device will not execute: answers exception ``code``."""

    def __init__(self, request: ModbusPDU, code: int) -> None:
        super().__init__(dev_id=request.dev_id, transaction_id=request.transaction_id)
        self.function_code = request.function_code
        self.code = code

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        return ExceptionResponse(self.function_code, self.code, device_id=device_id)


class FaultyTcpServer(ModbusTcpServer):
    """pymodbus's ``ModbusTcpServer`` applying an injector's faults on each connection.

    ``restart(unit_id, function)`` is called (synchronously) for a ``restart`` fault; the owner
    stops and starts the server and records the fault as applied.
    """

    def __init__(
        self,
        devices: list[SimDevice],
        *,
        address: tuple[str, int],
        faults: FaultInjector,
        traffic: TrafficLog,
        restart: Callable[[int, int], None],
    ) -> None:
        super().__init__(devices, address=address)
        self.faults = faults
        self.traffic = traffic
        self.restart = restart
        self._timers: set[asyncio.TimerHandle] = set()

    def callback_new_connection(self) -> ServerRequestHandler:
        hooks = _ConnectionFaults(self)
        make = cast(Callable[..., ServerRequestHandler], ServerRequestHandler)
        handler = make(self, hooks.packet, hooks.pdu, None)
        hooks.handler = handler
        return handler

    def later(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in ``delay_s`` unless :meth:`cancel_pending` comes first."""

        def run() -> None:
            self._timers.discard(timer)
            callback()

        timer = asyncio.get_running_loop().call_later(delay_s, run)
        self._timers.add(timer)

    def cancel_pending(self) -> None:
        """Forget delayed answers not sent yet (the server is stopping)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


class _ConnectionFaults:
    """The trace hooks of one client connection: pick a fault per request, apply it."""

    def __init__(self, server: FaultyTcpServer) -> None:
        self.server = server
        self.handler: ServerRequestHandler | None = None
        self.rule: FaultRule | None = None
        self.unit = self.function = 0

    def pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending:
            return pdu
        self.unit, self.function = pdu.dev_id, pdu.function_code
        self.rule = rule = self.server.faults.take(pdu.dev_id)
        fault = rule.fault if rule is not None else None
        frame = _TCP_FRAMER.buildFrame(pdu)
        self.server.traffic.add("request", self.unit, self.function, frame, fault)
        if rule is not None and not rule.fault.executes:
            return _Refused(pdu, rule.code)
        return pdu

    def packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        rule, self.rule = self.rule, None
        unit, function, server = self.unit, self.function, self.server
        if rule is None:
            server.traffic.add("answer", unit, function, data)
            return data
        fault = rule.fault
        if fault == Fault.delay:
            server.later(rule.delay_s, lambda: self._late(data))
            return b""
        if fault == Fault.restart:
            server.restart(unit, function)
            return b""
        out = b""
        if fault == Fault.exception:
            out = data
        elif fault == Fault.corrupt_frame:
            out = corrupt_mbap(data)
        elif fault == Fault.truncated:
            out = truncate(data)
        elif fault == Fault.garbage:
            out = garbage_bytes(server.faults.rng, len(data), rtu=False)
        elif fault == Fault.disconnect and self.handler is not None:
            asyncio.get_running_loop().call_soon(self.handler.close)
        if out:
            server.traffic.add("answer", unit, function, out, fault)
        server.faults.note_applied(fault, unit, function)
        return out

    def _late(self, data: bytes) -> None:
        handler = self.handler
        transport = handler.transport if handler is not None else None
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(data)
            self.server.traffic.add("answer", self.unit, self.function, data, Fault.delay)
        self.server.faults.note_applied(Fault.delay, self.unit, self.function)


_TCP_FRAMER = FramerSocket(DecodePDU(True))
