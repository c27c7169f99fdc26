"""Settings of the NB-IoT uplink: the modem, the hub's CoAP ingress, the PSM cycle.

A stand-alone NB-IoT sensor's agent sends its outbox as CoAP over the modem's UDP socket
instead of holding an MQTT session (see :mod:`edge_agent.nbiot.uplink`)::

    uplink:
      transport: nbiot
      modem: {port: /dev/serial/by-id/usb-Quectel_BC95-if00, apn: iot.example}
      hub_host: 203.0.113.7
      secret: <the agent's CoAP secret, from `provision_coap_secret` at the hub>
      uplink_interval_s: 900
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from drivers.nbiot import NbIotModemSettings

__all__ = ["NbIotUplinkSettings"]


class NbIotUplinkSettings(BaseModel):
    """Where the hub's CoAP ingress is, the agent's secret, and how the radio is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["nbiot"] = Field(
        default="nbiot", description="Discriminator among the agent's uplinks."
    )
    modem: NbIotModemSettings
    hub_host: IPv4Address = Field(description="IPv4 address of the hub's CoAP ingress.")
    hub_port: int = Field(default=5683, ge=1, le=65535)
    secret: SecretStr = Field(
        min_length=16,
        description="The agent's CoAP secret (given once by the hub's provisioning helper); "
        "uplinks carry an HMAC-SHA256 keyed with a key derived from it.",
    )
    uplink_interval_s: float = Field(
        default=900.0,
        gt=0,
        le=86400,
        description="PSM sleep between uplink cycles; events and command results wake early.",
    )
    max_datagram: int = Field(
        default=512,
        ge=64,
        le=512,
        description="Largest CoAP datagram sent; larger telemetry batches are split.",
    )
    compress: bool = Field(
        default=True,
        description="Send zlib-deflated JSON (Content-Format 11050) when that is smaller.",
    )
    ack_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="CoAP ACK_TIMEOUT (RFC 7252: 2 s)."
    )
    max_retransmit: int = Field(
        default=4, ge=0, le=10, description="CoAP MAX_RETRANSMIT (RFC 7252: 4)."
    )
    response_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="How long to wait for a separate response after the hub's empty ACK.",
    )
    register_timeout_s: float = Field(
        default=120.0, gt=0, le=3600, description="How long a wake may wait for the network."
    )
    retry_min_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="First retry after a failed cycle; doubles up to uplink_interval_s.",
    )
    drain_idle_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="A wake ends when the outbox has had nothing for this long (keep it above "
        "the agent's batch_max_delay_s).",
    )
    command_linger_s: float = Field(
        default=30.0,
        ge=0,
        le=600,
        description="After commands arrive, stay awake this long at most for their results.",
    )
    local_port: int = Field(
        default=0, ge=0, le=65535, description="Local UDP port on the modem (0: any)."
    )
    modem_check_interval_s: float = Field(
        default=900.0,
        ge=0,
        le=86400,
        description="How often a wake also reads the modem's figures (identity, signal, "
        "registration, PSM timers) for the agent's health report; 0: every wake.",
    )

    @model_validator(mode="after")
    def _fits_modem(self) -> Self:
        if self.max_datagram > self.modem.max_datagram:
            raise ValueError(
                f"max_datagram {self.max_datagram} exceeds the modem's max_datagram "
                f"{self.modem.max_datagram}"
            )
        return self
