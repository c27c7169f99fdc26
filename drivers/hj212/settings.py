"""Connection settings of HJ 212 devices: a serial line, or TCP in either direction.

Data loggers usually *connect* to the upper system as TCP clients, so the driver can listen
(``listen_port``) and take the logger's connection; it can also connect to a logger that
listens (``host``/``port``). On a serial line the driver opens the port itself::

    connection: {transport: hj212_serial, port: /dev/ttyUSB0, baudrate: 9600}
    connection: {transport: hj212_tcp, listen_port: 9212, mn: 010000A8900016F000169DC0}
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["BAUDRATES", "Hj212SerialSettings", "Hj212TcpSettings"]

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


class _Hj212Common(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mn: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9]{1,24}$",
        description="Accept only frames of this MN (and send requests to it); none = any.",
    )
    pw: str = Field(
        default="123456", pattern=r"^[A-Za-z0-9]{1,32}$", description="Access password (PW)."
    )
    st: str = Field(default="22", pattern=r"^[0-9]{2}$", description="System code (22 = air).")
    timeout_s: float = Field(default=5.0, gt=0, le=120, description="Answer timeout per attempt.")
    retries: int = Field(default=3, ge=0, le=10, description="Re-sends of an unanswered frame.")
    staleness_s: float = Field(
        default=90.0, gt=0, le=86400, description="A value older than this reads as a timeout."
    )
    auto_ack: bool = Field(default=True, description="Answer uploads that ask with 9014.")


class Hj212SerialSettings(_Hj212Common):
    """An analyser or data logger on a serial line (RS-232/RS-485)."""

    transport: Literal["hj212_serial"] = "hj212_serial"
    port: str = Field(min_length=1, description="Serial device, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, description="One of the standard rates, 8N1.")

    @model_validator(mode="after")
    def _check_baudrate(self) -> Self:
        if self.baudrate not in BAUDRATES:
            raise ValueError(f"baudrate {self.baudrate} is not one of {BAUDRATES}")
        return self

    @property
    def endpoint(self) -> str:
        return f"hj212-serial://{self.port}@{self.baudrate}"


class Hj212TcpSettings(_Hj212Common):
    """A data logger over TCP: we listen (``listen_port``) or connect (``host``)."""

    transport: Literal["hj212_tcp"] = "hj212_tcp"
    listen_host: str = Field(default="127.0.0.1", min_length=1)
    listen_port: int | None = Field(
        default=None, ge=0, le=65535, description="Listen here for loggers (0 = any free port)."
    )
    host: str | None = Field(default=None, min_length=1, description="Connect to this logger.")
    port: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _check_direction(self) -> Self:
        listening = self.listen_port is not None
        connecting = self.host is not None or self.port is not None
        if listening == connecting:
            raise ValueError("give either listen_port (we listen) or host and port (we connect)")
        if connecting and (self.host is None or self.port is None):
            raise ValueError("connecting needs both host and port")
        return self

    @property
    def listening(self) -> bool:
        return self.listen_port is not None

    @property
    def endpoint(self) -> str:
        if self.listening:
            return f"hj212-tcp://listen@{self.listen_host}:{self.listen_port}"
        return f"hj212-tcp://{self.host}:{self.port}"
