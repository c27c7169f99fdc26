"""AT command engine: one reader per serial port, one command in flight, URCs fanned out.

The engine splits what the modem sends into lines and sorts each line into

* the **echo** of the command in flight (``ATE1``): dropped;
* a **final result code** that ends the command in flight: ``OK``, ``ERROR``,
  ``+CME ERROR: <n>`` (with or without the space; BC95 omits it);
* an **information response** of the command in flight: a line starting with the command's own
  prefix (``+CSQ:31,99`` for ``AT+CSQ``) or a line without a ``+`` prefix (``0,2`` for
  ``AT+NSOST``, the data line of ``AT+NSORF``);
* an **unsolicited result code** (URC): every other line (``+NSONMI:0,12``, ``+CEREG:1``,
  ``+NPSMR:1``, ``REBOOT_CAUSE_...``), handed to every :meth:`AtEngine.subscribe` subscriber,
  also while a command is in flight.

Commands are serialised (one in flight, each with its own timeout). After a timeout or a
modem reboot the answer of the old command (or the ``OK`` ending the boot banner) may still
arrive during the next one, so the next command is preceded by a resynchronisation: a command
that must answer an information line before its ``OK`` (``AT+CMEE?``), which a stray ``OK``
cannot complete.

The engine does no I/O itself: bytes go in through :meth:`AtEngine.feed`, commands go out
through the ``write`` callable it was built with, and :meth:`AtEngine.connection_lost` tells it
the port is gone. :class:`SerialAtPort` binds an engine to a serial device: the port's fd in
non-blocking mode with ``loop.add_reader`` (no threads), so there is exactly one reader per port.

Errors (all :class:`~drivers.errors.DriverError`)::

    DriverTimeout
    └── AtTimeout               no final result code within the command's timeout
    DeviceException
    └── AtCommandError          ERROR / +CME ERROR: n (``cme_code``, None for plain ERROR)
    ConnectError
    ├── ModemGone               the port errored, hit EOF or was closed (USB unplug)
    └── ModemRestarted          the modem rebooted while the command was in flight
    ProtocolError               an answer that cannot be parsed (raised by the callers' parsers)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy as copy_module
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Self, TypeVar

import serial
import structlog

from drivers.errors import ConnectError, DeviceException, DriverTimeout

__all__ = [
    "AtCommandError",
    "AtEngine",
    "AtResponse",
    "AtTimeout",
    "FinalResult",
    "LineSplitter",
    "ModemGone",
    "ModemRestarted",
    "SerialAtPort",
    "Subscription",
    "Urc",
    "command_prefix",
    "fresh",
    "parse_final",
    "parse_urc",
    "split_fields",
    "strip_prefix",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: Longest line kept; an NSORF answer of 512 bytes is ~1,100 characters. Longer runs without a
#: line end are dropped (line noise), so garbage can never grow the buffer without bound.
MAX_LINE = 4096
#: Lines that announce a modem reboot (BC95: ``REBOOT_CAUSE_APPLICATION_AT``, ...).
RESET_MARKERS: tuple[str, ...] = ("REBOOT_",)
#: Lines without a ``+`` that are unsolicited (the BC95 boot banner).
UNSOLICITED_PLAIN: tuple[str, ...] = ("REBOOT_", "Neul", "Boot:", "Security", "Protocol", "Apps")

_CME = re.compile(r"^\+(CME|CMS) ERROR:\s*(.*)$", re.IGNORECASE)
_PREFIX = re.compile(r"^(\+[A-Za-z0-9_]+)")
_COMMAND_PREFIX = re.compile(r"^AT(\+[A-Za-z0-9_]+)", re.IGNORECASE)


# -- errors -------------------------------------------------------------------------------


class AtTimeout(DriverTimeout):
    """The modem gave no final result code for ``command`` within ``timeout_s``."""

    def __init__(self, command: str, timeout_s: float, port: str = "") -> None:
        self.command = command
        self.timeout_s = timeout_s
        where = f" on {port}" if port else ""
        super().__init__(f"{command!r}{where}: no final result code within {timeout_s}s")


class AtCommandError(DeviceException):
    """The modem refused ``command``: ``ERROR`` (``cme_code`` None) or ``+CME ERROR: n``.

    ``code`` (from :class:`DeviceException`) is ``cme_code``, or -1 for a plain ``ERROR``;
    ``function`` is 0 (AT has no function codes).
    """

    def __init__(self, command: str, cme_code: int | None, line: str) -> None:
        self.command = command
        self.cme_code = cme_code
        self.line = line
        super().__init__(-1 if cme_code is None else cme_code, 0, f"{command!r} -> {line!r}")
        self.args = (f"modem refused {command!r}: {line}",)

    @property
    def name(self) -> str:
        return "ERROR" if self.cme_code is None else f"+CME ERROR {self.cme_code}"

    def __str__(self) -> str:
        return str(self.args[0])


class ModemGone(ConnectError):
    """The serial port is gone: it errored, hit end of file (USB unplug), or was closed."""


class ModemRestarted(ConnectError):
    """The modem rebooted while a command was in flight; its outcome is unknown."""


# -- lines --------------------------------------------------------------------------------


class LineSplitter:
    """Bytes in, complete non-empty lines out; CR, LF and CRLF all end a line.

    Bytes are decoded as Latin-1 (every byte is a character, nothing can fail to decode). A run
    longer than ``max_line`` without a line end is discarded and counted in ``overflows``.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.overflows = 0
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[str]:
        """The lines completed by ``data``, stripped of surrounding white space."""
        self._buffer += data
        lines: list[str] = []
        start = 0
        buf = self._buffer
        for index, byte in enumerate(buf):
            if byte in (0x0D, 0x0A):
                if not self._discarding:
                    text = bytes(buf[start:index]).strip().decode("latin-1")
                    if text:
                        lines.append(text)
                self._discarding = False
                start = index + 1
        del buf[:start]
        if len(buf) > self.max_line:
            self.overflows += 1
            self._discarding = True
            buf.clear()
        return lines

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet ended."""
        return len(self._buffer)


@dataclass(frozen=True, slots=True)
class FinalResult:
    """A final result code: ``OK`` (``ok``), ``ERROR`` or ``+CME ERROR: n`` (``cme_code``)."""

    ok: bool
    line: str
    cme_code: int | None = None


def parse_final(line: str) -> FinalResult | None:
    """The final result code in ``line``, or None if the line is not one."""
    text = line.strip()
    upper = text.upper()
    if upper == "OK":
        return FinalResult(ok=True, line=text)
    if upper == "ERROR":
        return FinalResult(ok=False, line=text)
    match = _CME.match(text)
    if match is None:
        return None
    detail = match.group(2).strip()
    return FinalResult(ok=False, line=text, cme_code=int(detail) if detail.isdigit() else None)


def command_prefix(command: str) -> str | None:
    """The response prefix of an extended command: ``AT+CEREG?`` -> ``+CEREG``; None for
    basic commands (``AT``, ``ATE0``, ``ATI``)."""
    match = _COMMAND_PREFIX.match(command.strip())
    return match.group(1).upper() if match else None


def line_prefix(line: str) -> str | None:
    """``+NSONMI`` for ``+NSONMI:0,4``; None for a line without a ``+NAME`` prefix."""
    match = _PREFIX.match(line)
    return match.group(1).upper() if match else None


def strip_prefix(line: str, prefix: str) -> str:
    """The text after ``prefix:`` (``+CSQ: 31,99`` and ``+CSQ:31,99`` both give ``31,99``).

    A line without the prefix is returned unchanged (BC95 answers some commands bare).
    """
    text = line.strip()
    if text.upper().startswith(prefix.upper()):
        text = text[len(prefix) :].lstrip()
        if text.startswith(":"):
            text = text[1:]
    return text.strip()


def split_fields(text: str) -> list[str]:
    """Comma-separated fields, surrounding white space and double quotes removed."""
    if not text:
        return []
    fields: list[str] = []
    for raw in text.split(","):
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        fields.append(value)
    return fields


@dataclass(frozen=True, slots=True)
class Urc:
    """One unsolicited line: ``name`` is its prefix (``+NSONMI``) or, for a bare line, the line
    itself (``REBOOT_CAUSE_APPLICATION_AT``); ``fields`` the values after the colon."""

    line: str
    name: str
    fields: tuple[str, ...]
    received_at: float = field(default=0.0, compare=False)

    @property
    def is_reset(self) -> bool:
        """True for a line announcing a modem reboot."""
        return self.name.startswith(RESET_MARKERS)


def parse_urc(line: str, received_at: float = 0.0) -> Urc:
    """Split an unsolicited line into name and fields."""
    prefix = line_prefix(line)
    if prefix is None:
        return Urc(line=line, name=line.strip(), fields=(), received_at=received_at)
    return Urc(
        line=line,
        name=prefix,
        fields=tuple(split_fields(strip_prefix(line, prefix))),
        received_at=received_at,
    )


@dataclass(frozen=True, slots=True)
class AtResponse:
    """A successful command: its information lines (without echo, URCs and the final OK)."""

    command: str
    lines: tuple[str, ...]

    def info(self, prefix: str) -> list[list[str]]:
        """The fields of the lines carrying ``prefix``; if none does, of every line (BC95
        answers socket commands bare: ``0,12``)."""
        wanted = prefix.upper()
        tagged = [line for line in self.lines if line_prefix(line) == wanted]
        return [split_fields(strip_prefix(line, prefix)) for line in tagged or self.lines]

    def first(self, prefix: str) -> list[str]:
        """The fields of the first line :meth:`info` gives; [] if there is none."""
        rows = self.info(prefix)
        return rows[0] if rows else []


# -- subscriptions ------------------------------------------------------------------------


def fresh(error: E) -> E:
    """A new instance of ``error`` (same type, message and cause), to raise a stored error more
    than once without piling tracebacks onto one instance."""
    copy = copy_module.copy(error)
    copy.__traceback__ = None
    copy.__cause__ = error.__cause__
    return copy


class Subscription(Generic[T]):
    """A queue of items (URCs, modem events) for one consumer: ``async for item in sub``.

    Created registered, so nothing published after creation is missed. A full queue drops its
    oldest item (counted in ``dropped``). When the publisher ends, iteration stops; if it ended
    with an error (the modem is gone) :meth:`get` and iteration raise that error.
    """

    def __init__(
        self, maxsize: int = 1000, on_close: Callable[[Subscription[T]], None] | None = None
    ) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._end: BaseException | None = None
        self._ended = False
        self._on_close = on_close
        self.dropped = 0

    def publish(self, item: T) -> None:
        """Queue ``item`` (publisher side)."""
        if self._ended:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wakeup.set()

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream (publisher side): consumers drain it, then stop or get ``error``."""
        if not self._ended:
            self._ended, self._end = True, error
            self._wakeup.set()

    def get_nowait(self) -> T | None:
        """The next queued item, or None if none is queued."""
        return self._items.popleft() if self._items else None

    async def get(self, timeout_s: float | None = None) -> T:
        """The next item; TimeoutError after ``timeout_s``; StopAsyncIteration or the end error
        once the stream has ended and is drained."""
        async with asyncio.timeout(timeout_s):
            while not self._items:
                if self._ended:
                    if self._end is not None:
                        raise fresh(self._end)
                    raise StopAsyncIteration
                self._wakeup.clear()
                await self._wakeup.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving (consumer side)."""
        self.finish()
        self._items.clear()
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self.get()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# -- the engine ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    command: str
    prefix: str | None
    expect: str | None
    future: asyncio.Future[AtResponse]
    lines: list[str] = field(default_factory=list)


class AtEngine:
    """Serialised AT commands over one byte stream, with URCs fanned out to subscribers."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        *,
        name: str = "modem",
        default_timeout_s: float = 2.0,
        max_line: int = MAX_LINE,
        sync_command: tuple[str, str] = ("AT+CMEE?", "+CMEE"),
    ) -> None:
        self.name = name
        self.default_timeout_s = default_timeout_s
        self._write = write
        self._splitter = LineSplitter(max_line)
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._subscribers: list[Subscription[Urc]] = []
        self._gone: ModemGone | None = None
        self._unsynced = False
        #: Command and information prefix used to resynchronise (see :meth:`_resync`).
        self.sync_command = sync_command

    @property
    def gone(self) -> bool:
        """True once the port is lost or closed; every command then raises ModemGone."""
        return self._gone is not None

    @property
    def busy(self) -> bool:
        """True while a command is in flight."""
        return self._pending is not None

    def subscribe(self, maxsize: int = 1000) -> Subscription[Urc]:
        """A new subscription to every URC from now on (close it when done)."""
        sub: Subscription[Urc] = Subscription(maxsize, on_close=self._unsubscribe)
        if self._gone is not None:
            sub.finish(self._gone)
        else:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription[Urc]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    async def command(
        self, command: str, *, timeout_s: float | None = None, expect: str | None = None
    ) -> AtResponse:
        """Send ``command`` (without the trailing CR) and wait for its final result code.

        ``expect`` names the prefix of an information line the command always produces
        (``+CSQ``): an ``OK`` arriving before such a line is a stray (e.g. the ``OK`` of the
        BC95 boot banner) and is ignored. Raises :class:`AtCommandError`, :class:`AtTimeout`,
        :class:`ModemGone` or :class:`ModemRestarted`.
        """
        if "\r" in command or "\n" in command:
            raise ValueError(f"an AT command is one line: {command!r}")
        data = command.encode("latin-1") + b"\r"  # ValueError for characters beyond Latin-1
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            if self._unsynced:
                await self._resync(timeout)
            return await self._run(command, data, timeout, expect)

    async def _run(
        self, command: str, data: bytes, limit_s: float, expect: str | None
    ) -> AtResponse:
        if self._gone is not None:
            raise ModemGone(str(self._gone))
        loop = asyncio.get_running_loop()
        pending = _Pending(
            command=command,
            prefix=command_prefix(command),
            expect=expect.upper() if expect else None,
            future=loop.create_future(),
        )
        self._pending = pending
        try:
            log.debug("at send", port=self.name, command=command)
            self._write(data)
            async with asyncio.timeout(limit_s):
                return await pending.future
        except TimeoutError:
            log.warning("at timeout", port=self.name, command=command, timeout_s=limit_s)
            self._unsynced = True  # its answer may still come, during the next command
            raise AtTimeout(command, limit_s, self.name) from None
        except asyncio.CancelledError:
            self._unsynced = True  # same: the answer is still on its way
            raise
        finally:
            self._pending = None
            if pending.future.done() and not pending.future.cancelled():
                pending.future.exception()  # retrieved, even if the write raised first

    async def _resync(self, limit_s: float) -> None:
        """After a timeout or a reboot, a late ``OK``/``ERROR`` may still be on its way and
        would answer the next command. A command that must answer an information line before
        its ``OK`` (``AT+CMEE?`` -> ``+CMEE:1``) cannot be fooled by a stray ``OK``; a stray
        ``ERROR`` fails one attempt, so there are two (a modem that refuses the command twice
        is answering, which is all this needs to know). AtTimeout and ModemGone propagate."""
        command, expect = self.sync_command
        data = command.encode("latin-1") + b"\r"
        for _ in range(2):
            try:
                await self._run(command, data, limit_s, expect)
            except AtCommandError:
                continue
            break
        self._unsynced = False
        log.debug("at resynchronised", port=self.name)

    def feed(self, data: bytes) -> None:
        """Bytes read from the port."""
        now = time.monotonic()
        for line in self._splitter.feed(data):
            self._on_line(line, now)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The port is gone (``exc`` None: closed by us). Fails the command in flight and ends
        every subscription with :class:`ModemGone`."""
        if self._gone is not None:
            return
        reason = f"{self.name}: {exc}" if exc is not None else f"{self.name}: port closed"
        self._gone = ModemGone(reason)
        if exc is not None:
            self._gone.__cause__ = exc
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(ModemGone(reason))
        for sub in self._subscribers:
            sub.finish(ModemGone(reason))
        self._subscribers.clear()

    # -- line sorting -----------------------------------------------------------------

    def _on_line(self, line: str, now: float) -> None:
        pending = self._pending
        if pending is not None and pending.future.done():
            pending = None  # timed out or answered; its late lines are strays or URCs
        if pending is not None and line.upper() == pending.command.upper():
            return  # echo
        if line.startswith(RESET_MARKERS):
            self._unsynced = True  # the boot banner ends with a stray OK
        if line.startswith(RESET_MARKERS) and pending is not None:
            pending.future.set_exception(
                ModemRestarted(f"{self.name}: modem rebooted during {pending.command!r}: {line}")
            )
            pending = None
        final = parse_final(line)
        if final is not None:
            self._on_final(final, pending)
            return
        if pending is not None and self._is_response(line, pending):
            pending.lines.append(line)
            return
        if pending is None and line[:2].upper() == "AT":
            log.debug("at echo without command", port=self.name, line=line)
            return
        self._publish(parse_urc(line, now))

    def _on_final(self, final: FinalResult, pending: _Pending | None) -> None:
        if pending is None:
            log.debug("at stray result code", port=self.name, line=final.line)
            return
        if final.ok:
            if pending.expect is not None and not any(
                line_prefix(line) == pending.expect for line in pending.lines
            ):
                log.debug("at stray OK", port=self.name, command=pending.command)
                return
            log.debug("at ok", port=self.name, command=pending.command, lines=pending.lines)
            pending.future.set_result(AtResponse(pending.command, tuple(pending.lines)))
            return
        log.info("at error", port=self.name, command=pending.command, line=final.line)
        pending.future.set_exception(AtCommandError(pending.command, final.cme_code, final.line))

    @staticmethod
    def _is_response(line: str, pending: _Pending) -> bool:
        prefix = line_prefix(line)
        if prefix is not None:
            return prefix == pending.prefix
        return not line.startswith(UNSOLICITED_PLAIN)

    def _publish(self, urc: Urc) -> None:
        log.debug("at urc", port=self.name, line=urc.line)
        for sub in self._subscribers:
            sub.publish(urc)


# -- the serial port ----------------------------------------------------------------------


class SerialAtPort:
    """An :class:`AtEngine` on a serial device, read with ``loop.add_reader`` (no threads).

    ``open()`` opens ``path`` with pyserial (baud rate, 8N1, raw), puts its fd in non-blocking
    mode, flushes stale input and registers the reader; ``close()`` undoes it. Read errors and
    end of file (a USB adapter unplugged, a pty master closed) end the engine with
    :class:`ModemGone`; so does a failed write.
    """

    def __init__(
        self,
        path: str,
        *,
        baudrate: int = 9600,
        default_timeout_s: float = 2.0,
        on_lost: Callable[[BaseException | None], None] | None = None,
    ) -> None:
        self.path = path
        self.baudrate = baudrate
        self.engine = AtEngine(self._send, name=path, default_timeout_s=default_timeout_s)
        self._on_lost = on_lost
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = bytearray()

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> AtEngine:
        """Open the port; :class:`ModemGone` if the device is not there or cannot be opened."""
        if self._serial is not None:
            return self.engine
        try:
            port = serial.Serial(self.path, baudrate=self.baudrate, timeout=0, write_timeout=0)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModemGone(f"cannot open {self.path}: {exc}") from exc
        try:
            fd = port.fileno()
            os.set_blocking(fd, False)
            port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            port.close()
            raise ModemGone(f"cannot set up {self.path}: {exc}") from exc
        self._loop = asyncio.get_running_loop()
        self._serial, self._fd = port, fd
        self._loop.add_reader(fd, self._on_readable)
        log.debug("serial open", port=self.path, baudrate=self.baudrate)
        return self.engine

    def close(self) -> None:
        """Close the port (idempotent); a command in flight fails with ModemGone."""
        self._shutdown(None)

    def _shutdown(self, exc: BaseException | None) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
                self._loop.remove_writer(self._fd)
            with contextlib.suppress(OSError, serial.SerialException):
                port.close()
            self._fd = -1
            self._out.clear()
        already_gone = self.engine.gone
        self.engine.connection_lost(exc)
        if not already_gone and self._on_lost is not None:
            self._on_lost(exc)

    def _lost(self, exc: BaseException | None) -> None:
        log.warning("serial port lost", port=self.path, error=str(exc) if exc else "EOF")
        self._shutdown(exc if exc is not None else EOFError(f"end of file on {self.path}"))

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        self.engine.feed(data)

    def _send(self, data: bytes) -> None:
        if self._serial is None:
            raise ModemGone(f"{self.path}: port closed")
        self._out += data
        self._flush()
        if self._serial is None:
            raise ModemGone(f"{self.path}: port lost while writing")

    def _flush(self) -> None:
        while self._out and self._serial is not None:
            try:
                written = os.write(self._fd, self._out)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                self._lost(exc)
                return
            if written == 0:
                assert self._loop is not None
                self._loop.add_writer(self._fd, self._on_writable)
                return
            del self._out[:written]

    def _on_writable(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_writer(self._fd)
        self._flush()
