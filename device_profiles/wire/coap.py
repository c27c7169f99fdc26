"""The NB-IoT leg of the contract: the same JSON messages as MQTT, carried in CoAP requests
from a sleeping device to the hub's CoAP ingress, authenticated per agent.

Paths: ``POST /t`` a TelemetryBatch; ``POST /e/<code>`` a control message (``ev`` DeviceEvent,
``st`` AgentState, ``cr`` CommandResult, ``he`` AgentHealth, ``cf`` ReportedConfig);
``POST /p`` no payload, a poll for commands. The 2.04 response carries the commands queued for
the agent's devices and, until the agent reports that version, the configuration the hub
wants it to run (:class:`Downlink`: ``{"cmd": [CommandRequest, ...], "more": true, "cfg":
DesiredConfig}``); the agent answers a ``cfg`` with ``POST /e/cf`` (its ReportedConfig).

Body: the contract's JSON, Content-Format 50, or zlib-deflated (11050, "application/json,
deflate") when that is smaller; an inflated body larger than ``MAX_BODY`` is refused.

Authentication: one elective CoAP option (``AUTH_OPTION``, 65000) holding ``ts (uint32 s) |
mac (16 bytes) | agent id``. The key is ``HMAC-SHA256(secret, "citypulse coap key v1")``
(the hub stores the key, never the secret); the request MAC covers agent id, path, ts,
content-format and payload; every response but 4.01 carries a MAC over the request's MAC,
code, content-format and payload, so a spoofed datagram can neither inject commands nor make
the device drop data it still holds.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

from pydantic import BaseModel, ConfigDict, Field

from device_profiles.wire.errors import WireError
from device_profiles.wire.messages import CommandRequest, DesiredConfig
from device_profiles.wire.topics import Channel

__all__ = [
    "AUTH_OPTION",
    "CF_JSON",
    "CF_JSON_DEFLATE",
    "CONTROL_PATHS",
    "MAC_BYTES",
    "MAX_BODY",
    "BodyError",
    "Downlink",
    "UnsupportedContentFormat",
    "auth_value",
    "decode_body",
    "derive_key",
    "encode_body",
    "parse_auth_value",
    "request_mac",
    "response_mac",
]

AUTH_OPTION = 65000  # experimental range, even: elective (ignored by nodes unaware of it)


class Downlink(BaseModel):
    """The payload of a 2.xx response: commands for the agent's devices (``more``: others
    wait; poll again), and the configuration the hub wants the agent to run (``cfg``, sent
    until the agent reports that version)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    cmd: list[CommandRequest] = Field(default_factory=list)
    more: bool = False
    cfg: DesiredConfig | None = None


CF_JSON = 50
CF_JSON_DEFLATE = 11050
MAC_BYTES = 16
MAX_BODY = 64 * 1024
#: ``/e/<code>`` path codes of control messages
CONTROL_PATHS: dict[str, Channel] = {
    "ev": Channel.EVENTS,
    "st": Channel.STATE,
    "cr": Channel.COMMAND_RESULTS,
    "he": Channel.HEALTH,
    "cf": Channel.CONFIG_REPORTED,
}
_KEY_LABEL = b"citypulse coap key v1"
_REQUEST_LABEL = b"citypulse coap request v1\x00"
_RESPONSE_LABEL = b"citypulse coap response v1\x00"
_NO_FORMAT = 0xFFFF


class BodyError(WireError):
    """A CoAP payload that cannot be read as a contract message."""


class UnsupportedContentFormat(BodyError):
    """A payload in a content format the contract does not use."""


def _cf(content_format: int | None) -> int:
    return _NO_FORMAT if content_format is None else content_format


def derive_key(secret: str) -> bytes:
    """The HMAC key of an agent's CoAP secret (the hub stores this, never the secret)."""
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def request_mac(
    key: bytes, agent_id: str, path: str, ts: int, content_format: int | None, payload: bytes
) -> bytes:
    """The MAC of a request (``path`` joined with ``/``, e.g. ``e/cr``)."""
    data = b"".join(
        (
            _REQUEST_LABEL,
            agent_id.encode(),
            b"\x00",
            path.encode(),
            b"\x00",
            struct.pack("!IH", ts, _cf(content_format)),
            payload,
        )
    )
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_BYTES]


def response_mac(
    key: bytes, request_mac: bytes, code: int, content_format: int | None, payload: bytes
) -> bytes:
    """The MAC of the hub's response to the request whose MAC is ``request_mac``."""
    data = _RESPONSE_LABEL + request_mac + struct.pack("!BH", code, _cf(content_format)) + payload
    return hmac.new(key, data, hashlib.sha256).digest()[:MAC_BYTES]


def auth_value(agent_id: str, ts: int, mac: bytes) -> bytes:
    """The value of the auth option: ts (uint32) | mac | agent id."""
    return struct.pack("!I", ts) + mac + agent_id.encode("ascii")


def parse_auth_value(value: bytes) -> tuple[str, int, bytes]:
    """(agent id, ts, mac) of an auth option; WireError if it is malformed."""
    if len(value) < 4 + MAC_BYTES + 1:
        raise WireError("auth option too short")
    (ts,) = struct.unpack("!I", value[:4])
    try:
        agent_id = value[4 + MAC_BYTES :].decode("ascii")
    except UnicodeDecodeError:
        raise WireError("agent id is not ASCII") from None
    return agent_id, ts, value[4 : 4 + MAC_BYTES]


def encode_body(raw: bytes, *, compress: bool) -> tuple[bytes, int]:
    """A payload and its Content-Format: JSON, deflated (11050) when asked and smaller."""
    if compress:
        packed = zlib.compress(raw, 9)
        if len(packed) < len(raw):
            return packed, CF_JSON_DEFLATE
    return raw, CF_JSON


def decode_body(payload: bytes, content_format: int | None) -> bytes:
    """The JSON of a payload (inflated if 11050); BodyError if it cannot be."""
    if content_format == CF_JSON:
        return payload
    if content_format != CF_JSON_DEFLATE:
        raise UnsupportedContentFormat(
            f"content format {content_format} (use {CF_JSON} or {CF_JSON_DEFLATE})"
        )
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(payload, MAX_BODY)
    except zlib.error as exc:
        raise BodyError(f"payload does not inflate: {exc}") from exc
    if inflater.unconsumed_tail or not inflater.eof:
        raise BodyError(f"payload truncated or larger than {MAX_BODY} bytes inflated")
    return body
