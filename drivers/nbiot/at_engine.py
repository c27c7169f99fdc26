"""The AT engine: one command in flight, each line sorted, URCs fanned out; and its errors.

See :mod:`drivers.nbiot.at` for how lines are sorted and why commands are resynchronised.
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from drivers.errors import ConnectError, DeviceException, DriverTimeout
from drivers.nbiot.at_parsing import (
    MAX_LINE,
    RESET_MARKERS,
    UNSOLICITED_PLAIN,
    AtResponse,
    FinalResult,
    LineSplitter,
    Urc,
    command_prefix,
    line_prefix,
    parse_final,
    parse_urc,
)
from drivers.nbiot.subscription import Subscription

__all__ = ["AtCommandError", "AtEngine", "AtTimeout", "ModemGone", "ModemRestarted"]

log = structlog.get_logger(__name__)


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
