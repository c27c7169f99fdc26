"""Connection settings of a Modbus RTU device: a serial line (port, speed, framing) and a unit id.

The port is named by its device path (``/dev/ttyUSB0``, better the stable
``/dev/serial/by-id/usb-FTDI_...-if00-port0``) or by the USB serial number of the adapter
(``serial_number: A10K3ZQ1``), resolved at every (re)connection by
:func:`drivers.serial_ports.resolve_serial_port`::

    connection: {transport: modbus_rtu, port: /dev/ttyUSB0, baudrate: 9600, parity: E, unit_id: 3}

Several devices on one RS-485 line name the same port with the same line settings (speed,
framing); they share one bus (:mod:`drivers.modbus.bus`). ``timeout_s``, ``retries`` and
``max_gap`` are per device.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.plan import DEFAULT_MAX_GAP, MaxGap

__all__ = ["MIN_FRAME_GAP_S", "ModbusRtuSettings", "character_time_s", "default_frame_gap_s"]

#: The fixed inter-frame silence the Modbus serial line spec asks for above 19200 Bd.
MIN_FRAME_GAP_S = 0.00175


def character_time_s(
    baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1
) -> float:
    """Time one character takes on the line: start bit, data bits, parity bit, stop bits."""
    bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
    return bits / baudrate


def default_frame_gap_s(
    baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1
) -> float:
    """3.5 character times, and the fixed 1.75 ms above 19200 Bd (Modbus over serial line
    v1.02, 2.5.1.1); never below 1.75 ms."""
    if baudrate > 19200:
        return MIN_FRAME_GAP_S
    return max(MIN_FRAME_GAP_S, 3.5 * character_time_s(baudrate, bytesize, parity, stopbits))


class ModbusRtuSettings(BaseModel):
    """A Modbus RTU device on a serial line (RS-485/RS-232)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["modbus_rtu"] = "modbus_rtu"
    port: str | None = Field(
        default=None,
        min_length=1,
        description="Device path of the serial port, e.g. /dev/ttyUSB0 or "
        "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K3ZQ1-if00-port0.",
    )
    serial_number: str | None = Field(
        default=None,
        min_length=1,
        description="USB serial number of the adapter, instead of a path (see "
        "`python -m serial.tools.list_ports -v`).",
    )
    baudrate: int = Field(default=9600, ge=300, le=1_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: int = Field(default=1, ge=1, le=247, description="Modbus unit (slave) id, 1-247.")
    timeout_s: float = Field(
        default=1.0, gt=0, le=60, description="Per-attempt answer timeout (and open timeout)."
    )
    retries: int = Field(
        default=1, ge=0, le=10, description="Re-sends of a request that got no valid answer."
    )
    inter_frame_gap_s: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Silence kept on the line between frames; default 3.5 character times "
        "(1.75 ms above 19200 Bd).",
    )
    max_gap: MaxGap = DEFAULT_MAX_GAP

    @model_validator(mode="after")
    def _one_port(self) -> Self:
        if (self.port is None) == (self.serial_number is None):
            raise ValueError("give exactly one of 'port' (a device path) or 'serial_number'")
        return self

    @property
    def frame_gap_s(self) -> float:
        """The inter-frame silence in force (the setting, or 3.5 character times)."""
        if self.inter_frame_gap_s is not None:
            return self.inter_frame_gap_s
        return default_frame_gap_s(self.baudrate, self.bytesize, self.parity, self.stopbits)

    @property
    def line(self) -> str:
        """``9600-8N1``: speed and framing, which every device on one line shares."""
        return f"{self.baudrate}-{self.bytesize}{self.parity}{self.stopbits}"

    @property
    def port_label(self) -> str:
        """The port as configured: its path, or ``serial=<number>``."""
        return self.port if self.port is not None else f"serial={self.serial_number}"

    @property
    def endpoint(self) -> str:
        """``modbus-rtu:///dev/ttyUSB0?9600-8N1/3`` for logs and messages."""
        return f"modbus-rtu://{self.port_label}?{self.line}/{self.unit_id}"
