"""A serial line for simulators: a pseudo-terminal whose master side the simulator holds.

Clients open :attr:`PtyLink.path` as if it were ``/dev/ttyUSB0``: pyserial (pymodbus's
``AsyncModbusSerialClient``) and libmodbus (``mbpoll -m rtu``) both work on it. ``path`` is a
symlink in a private directory to the slave device (``/dev/pts/7``), like udev's
``/dev/serial/by-id`` links: it stays the same when :meth:`PtyLink.hangup` and
:meth:`PtyLink.open` replace the pseudo-terminal (an adapter unplugged and plugged back in),
while the ``/dev/pts`` number may change. Between the two the link is gone.

The link keeps a slave descriptor of its own open, set to raw mode, so the master side never
reads EIO between clients, and no line discipline (echo, CR/LF translation) touches the bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import tty
from pathlib import Path
from types import TracebackType
from typing import Self

import structlog

__all__ = ["PtyLink"]

log = structlog.get_logger(__name__)


class PtyLink:
    """A pseudo-terminal pair behind a stable path; the simulator reads and writes ``master_fd``."""

    def __init__(self, *, name: str = "ttySIM0", directory: str | None = None) -> None:
        self._own_dir = directory is None
        self._dir = Path(directory or tempfile.mkdtemp(prefix="iot-serial-"))
        self.path = str(self._dir / name)
        self._master: int | None = None
        self._slave: int | None = None
        self._device = ""

    @property
    def is_open(self) -> bool:
        return self._master is not None

    @property
    def master_fd(self) -> int:
        """The simulator's end (non-blocking); OSError when the link is not open."""
        if self._master is None:
            raise OSError(f"serial link {self.path} is not open")
        return self._master

    @property
    def device(self) -> str:
        """The slave device behind :attr:`path` (``/dev/pts/7``); empty when not open."""
        return self._device if self._master is not None else ""

    def open(self) -> None:
        """Create the pseudo-terminal and point :attr:`path` at it. No-op when open."""
        if self._master is not None:
            return
        self._dir.mkdir(mode=0o700, exist_ok=True)  # close() removed it
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave, self._device = master, slave, os.ttyname(slave)
        staging = f"{self.path}.new"
        if os.path.lexists(staging):
            os.unlink(staging)
        os.symlink(self._device, staging)
        os.replace(staging, self.path)  # atomic: a client sees the old link or the new one
        log.debug("serial link open", path=self.path, device=self._device)

    def hangup(self) -> None:
        """Close the pseudo-terminal: clients see the port vanish. Idempotent."""
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if os.path.lexists(self.path):
            os.unlink(self.path)
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)
        if master is not None:
            log.debug("serial link hung up", path=self.path, device=self._device)

    def close(self) -> None:
        """Hang up and remove the private directory. Idempotent."""
        self.hangup()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PtyLink {self.path} -> {self.device or 'closed'}>"
