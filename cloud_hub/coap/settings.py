"""Settings of the hub's CoAP ingress (NB-IoT agents; see :mod:`cloud_hub.coap.ingress`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CoapIngressSettings"]


class CoapIngressSettings(BaseModel):
    """Where the CoAP ingress listens and how it answers."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Serve CoAP for NB-IoT agents.")
    host: str = Field(
        default="127.0.0.1",
        description="Address to bind (IPv4 or IPv6); 0.0.0.0 or :: to accept NB-IoT traffic.",
    )
    port: int = Field(default=5683, ge=0, le=65535, description="UDP port (0: any free one).")
    store_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="How long a telemetry request waits for its readings to be stored before "
        "the answer is 5.03 (the agent sends them again later; storage is idempotent).",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="Requests whose authenticated timestamp is further from the hub's clock "
        "are refused (replay protection).",
    )
    max_response_bytes: int = Field(
        default=512,
        ge=128,
        le=1152,
        description="Largest response datagram: commands beyond it wait for the next uplink "
        "(BC95 modems read 512 bytes at most).",
    )
    redeliver_after_s: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="A command already returned in a response is returned again (until its "
        "result arrives) only after this long.",
    )
