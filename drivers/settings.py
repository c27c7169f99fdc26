"""How to reach one device: connection settings, one pydantic model per transport.

A device's settings live in the agent's configuration next to its profile name. They are
discriminated by ``transport``, so a YAML or JSON document picks its model by that key and an
unknown key is refused with its field path::

    connection: {transport: modbus_tcp, host: 10.0.3.17, unit_id: 1}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from drivers.coap.settings import CoapSettings
from drivers.hj212.settings import Hj212SerialSettings, Hj212TcpSettings
from drivers.modbus.plan import DEFAULT_MAX_GAP, MaxGap
from drivers.modbus.rtu_settings import ModbusRtuSettings

__all__ = [
    "CoapSettings",
    "ConnectionSettings",
    "Hj212SerialSettings",
    "Hj212TcpSettings",
    "ModbusRtuSettings",
    "ModbusTcpSettings",
]


class ModbusTcpSettings(BaseModel):
    """A Modbus TCP device (or a Modbus TCP gateway in front of an RS-485 bus)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["modbus_tcp"] = "modbus_tcp"
    host: str = Field(min_length=1, description="Host name or IP address of the device.")
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id, 0-247.")
    timeout_s: float = Field(
        default=1.0, gt=0, le=60, description="Connect timeout and per-attempt answer timeout."
    )
    retries: int = Field(
        default=1, ge=0, le=10, description="Re-sends of a request that got no answer."
    )
    max_gap: MaxGap = DEFAULT_MAX_GAP

    @property
    def endpoint(self) -> str:
        """``modbus-tcp://host:port/unit`` for logs and messages."""
        return f"modbus-tcp://{self.host}:{self.port}/{self.unit_id}"


#: Settings of any transport, chosen by ``transport``: a discriminated union that grows with
#: each transport.
ConnectionSettings = Annotated[
    ModbusTcpSettings | ModbusRtuSettings | CoapSettings | Hj212SerialSettings | Hj212TcpSettings,
    Field(discriminator="transport"),
]
