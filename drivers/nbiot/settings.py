"""Settings of an NB-IoT modem (Quectel BC95/BC28 style) on a serial port.

The modem is the agent's uplink on a stand-alone NB-IoT sensor, not a field device, so these
settings sit in the agent's configuration on their own (``modem:``), not in a device's
``connection``::

    modem: {port: /dev/serial/by-id/usb-Quectel_BC95-if00, baudrate: 9600, apn: iot.example}
    modem: {serial_number: A10K3ZQ1}
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["NbIotModemSettings"]


class NbIotModemSettings(BaseModel):
    """Where the modem is and how long its commands may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: str | None = Field(
        default=None,
        min_length=1,
        description="Serial device path; prefer a stable one (/dev/serial/by-id/...) so the "
        "modem is found again after a USB re-plug.",
    )
    serial_number: str | None = Field(
        default=None,
        min_length=1,
        description="USB serial number of the modem's adapter, instead of a path (resolved at "
        "every (re)connection by drivers.serial_ports.resolve_serial_port).",
    )
    baudrate: int = Field(default=9600, gt=0, le=4_000_000, description="BC95 default: 9600.")
    command_timeout_s: float = Field(
        default=2.0, gt=0, le=300, description="Answer timeout of ordinary commands."
    )
    socket_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Answer timeout of socket commands (AT+NSOCR/NSOST/NSORF/NSOCL), which wait "
        "for the radio on a real modem.",
    )
    init_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Time for the modem to answer the first AT."
    )
    apn: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        pattern=r'^[^",\r\n]+$',
        description='APN set with AT+CGDCONT=1,"IP",<apn> at connect; None leaves the '
        "modem's own setting.",
    )
    max_datagram: int = Field(
        default=512, ge=1, le=512, description="Largest datagram sent or read (BC95: 512)."
    )

    @model_validator(mode="after")
    def _one_port(self) -> Self:
        if (self.port is None) == (self.serial_number is None):
            raise ValueError("give exactly one of port or serial_number")
        return self

    @property
    def endpoint(self) -> str:
        """``nbiot-at:///dev/ttyUSB0`` (or ``nbiot-at://serial=A10K3ZQ1``) for logs."""
        return f"nbiot-at://{self.port or f'serial={self.serial_number}'}"
