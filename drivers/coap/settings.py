"""Connection settings of a CoAP device (RFC 7252 over UDP)::

    connection: {transport: coap, host: 10.0.5.20, timeout_s: 2, retries: 4, block_size: 256}

``timeout_s`` and ``retries`` are CoAP's ACK_TIMEOUT and MAX_RETRANSMIT: a confirmable request
is re-sent after ``timeout_s`` (x1-1.5, doubling each time) up to ``retries`` times, and an
operation gives up after :attr:`CoapSettings.max_wait_s` (RFC 7252's MAX_TRANSMIT_WAIT for
these values, plus one ``timeout_s``), also when the device ACKed but its separate response
never came.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ACK_RANDOM_FACTOR", "BlockSize", "CoapSettings"]

#: RFC 7252's ACK_RANDOM_FACTOR: the first wait is ``timeout_s`` times 1 to this.
ACK_RANDOM_FACTOR = 1.5

#: Block sizes of RFC 7959 (bytes); the exponent on the wire is log2(size) - 4.
BlockSize = Literal[16, 32, 64, 128, 256, 512, 1024]


class CoapSettings(BaseModel):
    """A device reached over CoAP (UDP, no DTLS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["coap"] = "coap"
    host: str = Field(min_length=1, description="Host name or IP address of the device.")
    port: int = Field(default=5683, ge=1, le=65535)
    timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="ACK_TIMEOUT: wait before the first re-send of a confirmable request.",
    )
    retries: int = Field(
        default=4, ge=0, le=10, description="MAX_RETRANSMIT: re-sends of an unanswered request."
    )
    block_size: BlockSize = Field(
        default=1024,
        description="Block-wise transfer (RFC 7959) block size in bytes asked of the device.",
    )
    observe: bool = Field(
        default=True,
        description="Observe (RFC 7641) the points whose profile location says observe; "
        "false polls every point with GET.",
    )
    write_method: Literal["PUT", "POST"] = Field(
        default="PUT", description="Method that writes a writable point."
    )

    @property
    def endpoint(self) -> str:
        """``coap://host:port`` for logs and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"coap://{host}:{self.port}"

    @property
    def block_size_exponent(self) -> int:
        """SZX of RFC 7959: 0 for 16 bytes ... 6 for 1024."""
        return self.block_size.bit_length() - 5

    @property
    def max_wait_s(self) -> float:
        """How long one request may take before it is reported as unanswered."""
        span = self.timeout_s * ((1 << (self.retries + 1)) - 1) * ACK_RANDOM_FACTOR
        return span + self.timeout_s
