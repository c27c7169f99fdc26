"""An AT engine bound to a serial device: one non-blocking reader per port, no threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

import serial
import structlog

from drivers.nbiot.at_engine import AtEngine, ModemGone

__all__ = ["SerialAtPort"]

log = structlog.get_logger(__name__)


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
