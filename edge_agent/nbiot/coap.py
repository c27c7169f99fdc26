"""The CoAP messages of the NB-IoT uplink: building requests, parsing datagrams, payloads.

The frame is described in :mod:`edge_agent.nbiot.uplink` (the hub's
:mod:`cloud_hub.coap.ingress` parses the same); the exchange (retransmissions, separate
responses) is :class:`~edge_agent.nbiot.uplink.NbIotUplink`'s. Only aiocoap's message encoding
is used here. Errors::

    NbIotUplinkError
    ├── FramingError        a datagram or payload that is not what the contract says
    ├── OversizedMessage    a message that does not fit one datagram even alone
    ├── CoapTimeout         no ACK after MAX_RETRANSMIT, or no separate response in time
    ├── CoapReset           the hub answered RST
    ├── CoapRefused         the hub answered 4.xx/5.xx (.code, .diagnostic, .permanent)
    └── ResponseNotAuthentic the response's MAC does not verify
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiocoap
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption
from pydantic import BaseModel, ValidationError

from device_profiles.wire import Channel, Reading, TelemetryBatch, encode
from device_profiles.wire.coap import (
    AUTH_OPTION,
    CONTROL_PATHS,
    BodyError,
    Downlink,
    auth_value,
    request_mac,
)
from device_profiles.wire.coap import decode_body as decode_coap_body
from device_profiles.wire.coap import encode_body as encode_coap_body

__all__ = [
    "PATHS",
    "POLL_PATH",
    "CoapRefused",
    "CoapReply",
    "CoapRequest",
    "CoapReset",
    "CoapTimeout",
    "Downlink",
    "FramingError",
    "NbIotUplinkError",
    "OversizedMessage",
    "ResponseNotAuthentic",
    "build_request",
    "decode_body",
    "decode_downlink",
    "empty_message",
    "encode_body",
    "parse_datagram",
    "split_batch",
]

#: The Uri-Path of each channel an agent sends.
PATHS: dict[Channel, tuple[str, ...]] = {
    Channel.TELEMETRY: ("t",),
    **{channel: ("e", code) for code, channel in CONTROL_PATHS.items()},
}
POLL_PATH: tuple[str, ...] = ("p",)


# -- errors -------------------------------------------------------------------------------


class NbIotUplinkError(Exception):
    """Base of the NB-IoT uplink's errors."""


class FramingError(NbIotUplinkError):
    """A datagram or payload that is not a CoAP message of the contract."""


class OversizedMessage(NbIotUplinkError):
    """A message that does not fit one datagram even on its own."""


class CoapTimeout(NbIotUplinkError):
    """No ACK after the last retransmission, or no separate response in time."""


class CoapReset(NbIotUplinkError):
    """The hub answered the request with RST (it does not know the exchange)."""


class CoapRefused(NbIotUplinkError):
    """The hub answered with an error code: ``permanent`` (4.xx but 4.01) means the message
    can never be accepted."""

    def __init__(self, code: int, diagnostic: str) -> None:
        self.code = code
        self.diagnostic = diagnostic
        super().__init__(f"hub answered {Code(code)}: {diagnostic}")

    @property
    def permanent(self) -> bool:
        return self.code >> 5 == 4 and self.code != int(Code.UNAUTHORIZED)


class ResponseNotAuthentic(NbIotUplinkError):
    """A response whose MAC is missing or wrong: ignored (it may be spoofed)."""


# -- framing ------------------------------------------------------------------------------


def encode_body(message: BaseModel, *, compress: bool) -> tuple[bytes, int]:
    """The payload of ``message`` and its Content-Format (see device_profiles.wire.coap)."""
    return encode_coap_body(encode(message), compress=compress)


def decode_body(payload: bytes, content_format: int | None) -> bytes:
    """The JSON of a response payload; FramingError if it cannot be read."""
    try:
        return decode_coap_body(payload, content_format)
    except BodyError as exc:
        raise FramingError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class CoapRequest:
    """An encoded confirmable request and what its response is matched and checked with."""

    mid: int
    token: bytes
    mac: bytes
    datagram: bytes


@dataclass(frozen=True, slots=True)
class CoapReply:
    """A parsed datagram from the hub."""

    mtype: int
    code: int
    mid: int
    token: bytes
    payload: bytes
    content_format: int | None
    mac: bytes | None

    @property
    def is_response(self) -> bool:
        return 2 <= self.code >> 5 <= 5


def build_request(
    *,
    key: bytes,
    agent_id: str,
    path: Sequence[str],
    payload: bytes,
    content_format: int | None,
    mid: int,
    token: bytes,
    ts: int,
) -> CoapRequest:
    """A confirmable POST to ``path`` with the auth option."""
    message = aiocoap.Message(code=Code.POST, payload=payload)
    message.mtype = Type.CON
    message.mid = mid
    message.token = token
    message.opt.uri_path = tuple(path)
    if content_format is not None:
        message.opt.content_format = content_format
    mac = request_mac(key, agent_id, "/".join(path), ts, content_format, payload)
    message.opt.add_option(OpaqueOption(AUTH_OPTION, auth_value(agent_id, ts, mac)))
    return CoapRequest(mid=mid, token=token, mac=mac, datagram=message.encode())


def empty_message(mtype: Type, mid: int) -> bytes:
    """An empty message (ACK or RST) for ``mid``."""
    message = aiocoap.Message(code=Code.EMPTY)
    message.mtype = mtype
    message.mid = mid
    encoded: bytes = message.encode()
    return encoded


def parse_datagram(data: bytes) -> CoapReply:
    """A datagram as a CoAP message; FramingError if it is not one."""
    try:
        message = aiocoap.Message.decode(data)
        options = message.opt.get_option(AUTH_OPTION)
        mac = bytes(options[0].value) if options else None
        cf = message.opt.content_format
        return CoapReply(
            mtype=int(message.mtype),
            code=int(message.code),
            mid=int(message.mid),
            token=bytes(message.token),
            payload=bytes(message.payload),
            content_format=None if cf is None else int(cf),
            mac=mac,
        )
    except (UnparsableMessage, ValueError, TypeError, IndexError, struct.error) as exc:
        raise FramingError(f"not a CoAP message: {exc}") from exc


def decode_downlink(payload: bytes, content_format: int | None) -> Downlink:
    """The commands of a response payload (none when it is empty)."""
    if not payload:
        return Downlink()
    body = decode_body(payload, content_format)
    try:
        return Downlink.model_validate_json(body)
    except ValidationError as exc:
        raise FramingError(f"response payload: {exc.error_count()} problem(s): {exc}") from exc


def split_batch(
    batch: TelemetryBatch, fits: Callable[[TelemetryBatch], bool]
) -> list[TelemetryBatch]:
    """``batch`` as parts (same agent id and seq) that each ``fit``, halving as needed;
    OversizedMessage if a single reading does not fit."""
    if fits(batch):
        return [batch]
    readings: list[Reading] = batch.readings
    if len(readings) == 1:
        raise OversizedMessage(
            f"reading of {readings[0].device_id} at {readings[0].ts} does not fit one datagram"
        )
    half = len(readings) // 2
    first = batch.model_copy(update={"readings": readings[:half]})
    second = batch.model_copy(update={"readings": readings[half:]})
    return split_batch(first, fits) + split_batch(second, fits)
