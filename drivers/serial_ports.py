"""Stable identity of a serial port: follow ``/dev/serial/by-id`` links, or find a USB adapter
by its serial number.

Kernel names (``/dev/ttyUSB0``) follow the order adapters were plugged in; after a replug or a
reboot the same adapter may be ``/dev/ttyUSB1``. udev's ``/dev/serial/by-id/...`` links and the
adapter's USB serial number stay put. :func:`resolve_serial_port` turns either into the device
to open, reports both names, and is called again at every reconnection, so a driver follows an
adapter that came back under another name::

    resolve_serial_port(port="/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K3ZQ1-if00-port0")
    # SerialPortIdentity(configured=..., device='/dev/ttyUSB1', serial_number='A10K3ZQ1', ...)
    resolve_serial_port(serial_number="A10K3ZQ1")

A port that is not there raises :class:`SerialPortNotFound` (a ``ConnectError``: the adapter may
come back) listing the ports that are present.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serial.tools import list_ports

from drivers.errors import ConfigurationError, ConnectError

__all__ = ["BY_ID_DIR", "SerialPortIdentity", "SerialPortNotFound", "resolve_serial_port"]

#: Where udev keeps links named after each adapter's vendor, model and serial number.
BY_ID_DIR = Path("/dev/serial/by-id")


@dataclass(frozen=True, slots=True)
class SerialPortIdentity:
    """Which device a configured port is right now."""

    #: The port as configured: a path, or ``serial=<number>``.
    configured: str
    #: The real device node to open, symlinks followed (``/dev/ttyUSB1``, ``/dev/pts/7``).
    device: str
    #: The adapter's USB serial number, when the system reports one.
    serial_number: str | None = None
    #: The ``/dev/serial/by-id`` link pointing at the device, if there is one.
    by_id: str | None = None
    #: What the system says the adapter is (``FT232R USB UART``), if anything.
    description: str | None = None

    @property
    def label(self) -> str:
        """``configured -> device`` when they differ, for logs."""
        return (
            self.device if self.configured == self.device else f"{self.configured} -> {self.device}"
        )


class SerialPortNotFound(ConnectError):
    """The configured serial port is not present; ``available`` lists what is."""

    def __init__(self, wanted: str, available: Iterable[str]) -> None:
        self.wanted = wanted
        self.available = tuple(available)
        present = ", ".join(self.available) if self.available else "none"
        super().__init__(f"serial port {wanted} not found (present: {present})")


def resolve_serial_port(
    *, port: str | None = None, serial_number: str | None = None
) -> SerialPortIdentity:
    """The device behind ``port`` (a path, symlinks followed) or ``serial_number``.

    Give exactly one. Raises :class:`SerialPortNotFound` when the port is absent and
    :class:`~drivers.errors.ConfigurationError` when several adapters report the same serial
    number (name one by its ``/dev/serial/by-path`` link instead).
    """
    if (port is None) == (serial_number is None):
        raise ConfigurationError("give exactly one of port or serial_number")
    if port is not None:
        return _by_path(port)
    assert serial_number is not None  # narrowed by the check above
    return _by_serial_number(serial_number)


def _by_path(port: str) -> SerialPortIdentity:
    device = os.path.realpath(port)
    if not os.path.exists(device):
        raise SerialPortNotFound(port, _present())
    info = _port_info(device)
    return SerialPortIdentity(
        configured=port,
        device=device,
        serial_number=_attr(info, "serial_number"),
        by_id=port if _is_by_id(port) else _by_id_link(device),
        description=_attr(info, "description"),
    )


def _by_serial_number(serial_number: str) -> SerialPortIdentity:
    wanted = serial_number.strip()
    matches = [p for p in _comports() if (_attr(p, "serial_number") or "").strip() == wanted]
    label = f"serial={serial_number}"
    if not matches:
        raise SerialPortNotFound(label, _present())
    if len(matches) > 1:
        devices = ", ".join(sorted(str(p.device) for p in matches))
        raise ConfigurationError(
            f"several serial adapters report serial number {serial_number} ({devices}); "
            "name the port by its /dev/serial/by-path link instead"
        )
    info = matches[0]
    device = os.path.realpath(str(info.device))
    return SerialPortIdentity(
        configured=label,
        device=device,
        serial_number=wanted,
        by_id=_by_id_link(device),
        description=_attr(info, "description"),
    )


def _comports() -> list[Any]:
    return list(list_ports.comports())


def _present() -> list[str]:
    """The ports present, each with its serial number when known (for error messages)."""
    out = []
    for info in sorted(_comports(), key=lambda p: str(p.device)):
        serial = _attr(info, "serial_number")
        out.append(f"{info.device} (serial {serial})" if serial else str(info.device))
    return out


def _port_info(device: str) -> Any | None:
    for info in _comports():
        if os.path.realpath(str(info.device)) == device:
            return info
    return None


def _attr(info: Any | None, name: str) -> str | None:
    value = getattr(info, name, None) if info is not None else None
    if value is None or value == "n/a":  # list_ports fills unknown descriptions with "n/a"
        return None
    return str(value)


def _is_by_id(port: str) -> bool:
    return Path(port).parent == BY_ID_DIR


def _by_id_link(device: str) -> str | None:
    try:
        links = sorted(BY_ID_DIR.iterdir())
    except OSError:  # no USB serial adapter was ever plugged in: the directory is absent
        return None
    for link in links:
        if os.path.realpath(link) == device:
            return str(link)
    return None
