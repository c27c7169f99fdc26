"""The NB-IoT CoAP frame: building and parsing, HMAC, splitting, and the hub's side of it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_hub.coap.ingress import CoapIngress
from cloud_hub.coap.models import (
    coap_key,
    derive_coap_key,
    provision_coap_secret,
    revoke_coap_secret,
)
from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.hub import Hub
from cloud_hub.settings import HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import (
    AgentHealth,
    Channel,
    CommandRequest,
    CommandResult,
    Reading,
    TelemetryBatch,
    encode,
)
from device_profiles.wire.coap import CONTROL_PATHS
from drivers.nbiot import Datagram, NbIotModemSettings
from edge_agent.nbiot.settings import NbIotUplinkSettings
from edge_agent.nbiot.uplink import (
    AUTH_OPTION,
    CF_JSON,
    CF_JSON_DEFLATE,
    PATHS,
    POLL_PATH,
    CoapRefused,
    CoapRequest,
    CoapReset,
    CoapTimeout,
    Downlink,
    FramingError,
    NbIotUplink,
    OversizedMessage,
    ResponseNotAuthentic,
    WakingOutbox,
    build_request,
    decode_body,
    decode_downlink,
    derive_key,
    encode_body,
    parse_datagram,
    request_mac,
    response_mac,
    split_batch,
)
from edge_agent.outbox.memory import Outbox

pytestmark = pytest.mark.unit

SECRET = "s3cret-s3cret-s3cret"
KEY = derive_key(SECRET)


def _batch(n: int, seq: int = 7) -> TelemetryBatch:
    readings = [
        Reading(
            device_id="pole-1",
            ts=1_700_000_000_000 + i * 1000,
            values={"voltage": 230.0 + i / 10, "current": 1.25 + i, "lamp_on": i % 2 == 0},
        )
        for i in range(n)
    ]
    return TelemetryBatch(agent_id="nb-1", seq=seq, readings=readings)


def _request(
    path: tuple[str, ...],
    payload: bytes,
    cf: int | None,
    *,
    ts: int | None = None,
    key: bytes = KEY,
    agent_id: str = "nb-1",
    mid: int = 1,
    token: bytes = b"tokn",
) -> CoapRequest:
    return build_request(
        key=key,
        agent_id=agent_id,
        path=path,
        payload=payload,
        content_format=cf,
        mid=mid,
        token=token,
        ts=int(time.time()) if ts is None else ts,
    )


# -- agent side ---------------------------------------------------------------------------


def test_request_round_trip() -> None:
    payload, cf = encode_body(_batch(3), compress=True)
    assert cf == CF_JSON_DEFLATE
    request = _request(PATHS[Channel.TELEMETRY], payload, cf, ts=1234)
    message = aiocoap.Message.decode(request.datagram)
    assert message.mtype == Type.CON
    assert message.code == Code.POST
    assert message.mid == 1
    assert message.token == b"tokn"
    assert tuple(message.opt.uri_path) == ("t",)
    assert int(message.opt.content_format) == CF_JSON_DEFLATE
    auth = bytes(message.opt.get_option(AUTH_OPTION)[0].value)
    assert struct.unpack("!I", auth[:4]) == (1234,)
    assert auth[4:20] == request.mac
    assert auth[20:] == b"nb-1"
    assert request.mac == request_mac(KEY, "nb-1", "t", 1234, CF_JSON_DEFLATE, payload)
    body = decode_body(bytes(message.payload), CF_JSON_DEFLATE)
    assert TelemetryBatch.model_validate_json(body) == _batch(3)


def test_uncompressed_when_compression_does_not_help() -> None:
    result = CommandResult(command_id="c", device_id="d", status="delivered", ts=1)
    payload, cf = encode_body(result, compress=False)
    assert (payload, cf) == (encode(result), CF_JSON)
    assert decode_body(payload, CF_JSON) == payload


def test_mac_covers_every_field() -> None:
    base = request_mac(KEY, "nb-1", "t", 100, CF_JSON, b"{}")
    variants = [
        request_mac(derive_key("another-secret-xx"), "nb-1", "t", 100, CF_JSON, b"{}"),
        request_mac(KEY, "nb-2", "t", 100, CF_JSON, b"{}"),
        request_mac(KEY, "nb-1", "e/cr", 100, CF_JSON, b"{}"),
        request_mac(KEY, "nb-1", "t", 101, CF_JSON, b"{}"),
        request_mac(KEY, "nb-1", "t", 100, CF_JSON_DEFLATE, b"{}"),
        request_mac(KEY, "nb-1", "t", 100, None, b"{}"),
        request_mac(KEY, "nb-1", "t", 100, CF_JSON, b"{ }"),
    ]
    assert len(base) == 16
    assert base not in variants
    assert len(set(variants)) == len(variants)
    assert response_mac(KEY, base, 68, None, b"") != response_mac(KEY, variants[0], 68, None, b"")


def test_agent_and_hub_derive_the_same_key() -> None:
    assert derive_key(SECRET) == derive_coap_key(SECRET)


def test_split_batch_fits_and_keeps_order() -> None:
    batch = _batch(120)

    def fits(part: TelemetryBatch) -> bool:
        return len(encode_body(part, compress=True)[0]) <= 300

    parts = split_batch(batch, fits)
    assert len(parts) > 1
    assert all(fits(p) for p in parts)
    assert all(p.seq == 7 and p.agent_id == "nb-1" for p in parts)
    assert [r for p in parts for r in p.readings] == batch.readings


def test_split_batch_refuses_a_reading_that_never_fits() -> None:
    with pytest.raises(OversizedMessage):
        split_batch(_batch(4), lambda part: False)


def test_downlink_decoding() -> None:
    command = {
        "command_id": "c1",
        "device_id": "pole-1",
        "name": "lamp_on",
        "issued_at": 1,
    }
    raw = json.dumps({"cmd": [command], "more": True}).encode()
    for payload, cf in ((raw, CF_JSON), (zlib.compress(raw), CF_JSON_DEFLATE)):
        downlink = decode_downlink(payload, cf)
        assert downlink.more is True
        assert [c.command_id for c in downlink.cmd] == ["c1"]
    assert decode_downlink(b"", None) == Downlink()
    with pytest.raises(FramingError):
        decode_downlink(b'{"cmd": [{"command_id": 5}]}', CF_JSON)
    with pytest.raises(FramingError):
        decode_downlink(b"{}", 42)
    with pytest.raises(FramingError):
        decode_body(zlib.compress(b"x" * 200_000), CF_JSON_DEFLATE)  # a deflate bomb
    with pytest.raises(FramingError):
        decode_body(zlib.compress(b"{}")[:-3], CF_JSON_DEFLATE)  # truncated


def test_refusal_permanence() -> None:
    assert CoapRefused(int(Code.BAD_REQUEST), "x").permanent
    assert not CoapRefused(int(Code.UNAUTHORIZED), "x").permanent
    assert not CoapRefused(int(Code.SERVICE_UNAVAILABLE), "x").permanent


def test_settings_refuse_datagrams_larger_than_the_modem_reads() -> None:
    with pytest.raises(ValueError, match="max_datagram"):
        NbIotUplinkSettings(
            modem=NbIotModemSettings(port="/dev/null", max_datagram=256),
            hub_host="127.0.0.1",
            secret=SECRET,
            max_datagram=512,
        )
    with pytest.raises(ValueError, match="IPv4"):
        NbIotUplinkSettings(
            modem=NbIotModemSettings(port="/dev/null"), hub_host="hub.example", secret=SECRET
        )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_datagrams_raise_only_typed_errors(data: bytes) -> None:
    try:
        reply = parse_datagram(data)
    except FramingError:
        return
    with contextlib.suppress(FramingError):
        decode_downlink(reply.payload, reply.content_format)


@settings(max_examples=200)
@given(st.binary(max_size=300), st.sampled_from([None, CF_JSON, CF_JSON_DEFLATE, 0, 60]))
def test_random_payloads_raise_only_typed_errors(payload: bytes, cf: int | None) -> None:
    with contextlib.suppress(FramingError):
        decode_downlink(payload, cf)
    with contextlib.suppress(FramingError):
        decode_downlink(zlib.compress(payload), CF_JSON_DEFLATE)


# -- hub side (in-process hub on SQLite; no broker needed for these) ------------------------


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = HubSettings(
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
    )
    hub = Hub(settings)
    await hub.start()
    await provision_coap_secret(hub.registry, "nb-1", SECRET)
    try:
        yield hub
    finally:
        await hub.close()


async def _ask(
    ingress: CoapIngress, path: tuple[str, ...], request_bytes: bytes
) -> aiocoap.Message:
    message = aiocoap.Message.decode(request_bytes)
    channel: Channel | None = None
    if path == ("t",):
        channel = Channel.TELEMETRY
    elif path[0] == "e":
        channel = CONTROL_PATHS[path[1]]
    return await ingress.handle("/".join(path), channel, message)


async def test_hub_answers_a_poll_with_a_signed_response(hub: Hub) -> None:
    ingress = CoapIngress(hub, CoapIngressSettings())
    request = _request(POLL_PATH, b"", None)
    reply = await _ask(ingress, POLL_PATH, request.datagram)
    assert reply.code == Code.CHANGED
    mac = bytes(reply.opt.get_option(AUTH_OPTION)[0].value)
    assert mac == response_mac(KEY, request.mac, int(Code.CHANGED), None, b"")


async def test_hub_refuses_bad_authentication(hub: Hub) -> None:
    ingress = CoapIngress(hub, CoapIngressSettings())
    dead_before = hub.ingest.stats["dead_letters"]
    cases = [
        _request(POLL_PATH, b"", None, key=derive_key("a-wrong-secret-123")),
        _request(POLL_PATH, b"", None, agent_id="nb-unknown"),
        _request(POLL_PATH, b"", None, ts=int(time.time()) - 3600),
    ]
    for request in cases:
        reply = await _ask(ingress, POLL_PATH, request.datagram)
        assert reply.code == Code.UNAUTHORIZED
        assert reply.payload
    no_auth = aiocoap.Message(code=Code.POST)
    reply = await ingress.handle("p", None, no_auth)
    assert reply.code == Code.UNAUTHORIZED
    # a request for one path replayed against another
    request = _request(POLL_PATH, b"", None)
    reply = await _ask(ingress, ("e", "cr"), request.datagram)
    assert reply.code == Code.UNAUTHORIZED
    assert hub.ingest.stats["dead_letters"] == dead_before + len(cases) + 2
    assert ingress.stats["unauthorized"] == len(cases) + 2

    assert await revoke_coap_secret(hub.registry, "nb-1")
    assert await coap_key(hub.registry, "nb-1") is None
    reply = await _ask(ingress, POLL_PATH, _request(POLL_PATH, b"", None).datagram)
    assert reply.code == Code.UNAUTHORIZED


async def test_hub_refuses_malformed_payloads_with_signed_4xx(hub: Hub) -> None:
    ingress = CoapIngress(hub, CoapIngressSettings())
    cases = [
        (("t",), b"not json", CF_JSON, Code.BAD_REQUEST),
        (("t",), b"\x00\x01garbage", CF_JSON_DEFLATE, Code.BAD_REQUEST),
        (("e", "cr"), b"{}", 60, Code.UNSUPPORTED_CONTENT_FORMAT),
        (
            ("t",),
            encode(_batch(1).model_copy(update={"agent_id": "nb-2"})),
            CF_JSON,
            Code.FORBIDDEN,
        ),
    ]
    for path, payload, cf, code in cases:
        request = _request(path, payload, cf)
        reply = await _ask(ingress, path, request.datagram)
        assert reply.code == code, reply.payload
        mac = bytes(reply.opt.get_option(AUTH_OPTION)[0].value)
        assert mac == response_mac(KEY, request.mac, int(code), None, bytes(reply.payload))
    assert ingress.stats["bad_requests"] == len(cases)
    assert hub.ingest.stats["dead_letters"] == len(cases)


# -- the agent's CoAP exchange over a scripted socket ----------------------------------------


class ScriptedSocket:
    """Stands in for the modem's UdpSocket: ``script(sock, datagram)`` runs at each send."""

    def __init__(self, script: Callable[[ScriptedSocket, bytes], None]) -> None:
        self.script = script
        self.sent: list[bytes] = []
        self.inbox: asyncio.Queue[Datagram] = asyncio.Queue()

    async def send(self, host: str, port: int, data: bytes) -> int:
        self.sent.append(data)
        self.script(self, data)
        return len(data)

    async def receive(self, timeout_s: float | None = None) -> Datagram:
        return await asyncio.wait_for(self.inbox.get(), timeout_s)

    def answer(self, data: bytes, host: str = "127.0.0.1", port: int = 5683) -> None:
        self.inbox.put_nowait(Datagram(host, port, data))


def _uplink(received: list[CommandRequest]) -> NbIotUplink:
    settings = NbIotUplinkSettings(
        modem=NbIotModemSettings(port="/dev/null"),
        hub_host="127.0.0.1",
        secret=SECRET,
        ack_timeout_s=0.01,
        max_retransmit=2,
        response_timeout_s=0.5,
    )

    async def on_command(request: CommandRequest) -> None:
        received.append(request)

    return NbIotUplink("nb-1", settings, Outbox("nb-1"), [], on_command)


def _hub_reply(
    request: bytes,
    *,
    mtype: Type,
    mid: int | None = None,
    payload: bytes = b"",
    code: Code = Code.CHANGED,
    key: bytes = KEY,
) -> bytes:
    incoming = aiocoap.Message.decode(request)
    auth = bytes(incoming.opt.get_option(AUTH_OPTION)[0].value)
    cf = CF_JSON if payload else None
    reply = CoapIngress._signed(key, auth[4:20], code, payload, cf)
    reply.mtype = mtype
    reply.mid = incoming.mid if mid is None else mid
    reply.token = incoming.token
    return bytes(reply.encode())


def _empty_ack(request: bytes) -> bytes:
    message = aiocoap.Message(code=Code.EMPTY)
    message.mtype = Type.ACK
    message.mid = aiocoap.Message.decode(request).mid
    return bytes(message.encode())


COMMANDS = json.dumps(
    {"cmd": [{"command_id": "c9", "device_id": "pole-1", "name": "lamp_on", "issued_at": 1}]}
).encode()


async def _post(uplink: NbIotUplink, sock: ScriptedSocket) -> None:
    await uplink._post(sock, POLL_PATH, b"", None)  # type: ignore[arg-type]
    if uplink._tasks:
        await asyncio.wait(uplink._tasks)


async def test_separate_response_is_acknowledged_and_used() -> None:
    received: list[CommandRequest] = []
    uplink = _uplink(received)

    def script(sock: ScriptedSocket, data: bytes) -> None:
        if len(sock.sent) == 1:
            sock.answer(b"\x40garbage")  # unparsable: ignored
            sock.answer(_empty_ack(data), port=9999)  # from a stranger: ignored
            sock.answer(_empty_ack(data))
            sock.answer(_hub_reply(data, mtype=Type.CON, mid=4242, payload=COMMANDS))

    sock = ScriptedSocket(script)
    await _post(uplink, sock)
    assert [c.command_id for c in received] == ["c9"]
    assert len(sock.sent) == 2
    ack = aiocoap.Message.decode(sock.sent[1])
    assert (ack.mtype, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 4242)


async def test_no_ack_means_retransmissions_then_timeout() -> None:
    uplink = _uplink([])
    sock = ScriptedSocket(lambda sock, data: None)
    with pytest.raises(CoapTimeout):
        await _post(uplink, sock)
    assert len(sock.sent) == 3  # the request and MAX_RETRANSMIT (2) retransmissions
    assert len(set(sock.sent)) == 1  # the same message each time
    assert uplink.retransmissions == 2


async def test_a_response_without_a_valid_mac_runs_nothing() -> None:
    received: list[CommandRequest] = []
    uplink = _uplink(received)
    forged = derive_key("a-forger-does-not-know")

    def script(sock: ScriptedSocket, data: bytes) -> None:
        sock.answer(_hub_reply(data, mtype=Type.ACK, payload=COMMANDS, key=forged))

    with pytest.raises(ResponseNotAuthentic):
        await _post(uplink, ScriptedSocket(script))
    assert received == []


async def test_reset_and_refusals() -> None:
    uplink = _uplink([])

    def reset(sock: ScriptedSocket, data: bytes) -> None:
        message = aiocoap.Message(code=Code.EMPTY)
        message.mtype = Type.RST
        message.mid = aiocoap.Message.decode(data).mid
        sock.answer(bytes(message.encode()))

    with pytest.raises(CoapReset):
        await _post(uplink, ScriptedSocket(reset))

    def bad_request(sock: ScriptedSocket, data: bytes) -> None:
        sock.answer(_hub_reply(data, mtype=Type.ACK, code=Code.BAD_REQUEST))

    with pytest.raises(CoapRefused) as refused:
        await _post(uplink, ScriptedSocket(bad_request))
    assert refused.value.permanent


async def test_waking_outbox_signals_unsent_urgent_messages() -> None:
    outbox = WakingOutbox(Outbox("nb-1"))
    health = AgentHealth(agent_id="nb-1", ts=1)
    outbox.put_control(Channel.HEALTH, health)
    assert not outbox.urgent.is_set()  # health waits for the next wake
    result = CommandResult(command_id="c", device_id="d", status="succeeded", ts=1)
    outbox.put_control(Channel.COMMAND_RESULTS, result)
    outbox.put_control(Channel.COMMAND_RESULTS, result)
    assert outbox.urgent.is_set()
    sent = []
    for _ in range(3):
        item = await outbox.next()
        sent.append(item.channel)
        outbox.ack(item)
    assert sent == [Channel.HEALTH, Channel.COMMAND_RESULTS, Channel.COMMAND_RESULTS]
    assert not outbox.urgent.is_set()  # all sent: no reason to wake
    assert outbox.depth == 0
    assert outbox.batch_max_readings == 500  # the rest is the wrapped outbox's


async def test_hub_survives_random_requests(hub: Hub) -> None:
    ingress = CoapIngress(hub, CoapIngressSettings(store_timeout_s=0.2))
    rng = random.Random(2026)
    paths = [("t",), ("p",), *(("e", code) for code in CONTROL_PATHS)]
    for _ in range(150):
        path = rng.choice(paths)
        payload = rng.randbytes(rng.randrange(0, 80))
        if rng.random() < 0.3:
            payload = zlib.compress(payload)
        cf = rng.choice([None, CF_JSON, CF_JSON_DEFLATE, 0, 60])
        if rng.random() < 0.5:  # garbage auth
            message = aiocoap.Message(code=Code.POST, payload=payload)
            message.opt.add_option(OpaqueOption(AUTH_OPTION, rng.randbytes(rng.randrange(30))))
            reply = await ingress.handle("/".join(path), None, message)
            assert reply.code == Code.UNAUTHORIZED
            continue
        request = _request(path, payload, cf)
        reply = await _ask(ingress, path, request.datagram)
        assert reply.code in {
            Code.CHANGED,
            Code.BAD_REQUEST,
            Code.FORBIDDEN,
            Code.UNSUPPORTED_CONTENT_FORMAT,
        }, reply.payload
    assert ingress.stats["errors"] == 0
