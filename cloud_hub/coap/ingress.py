"""The hub's CoAP ingress for NB-IoT agents: authenticated uplinks into the MQTT ingest path,
and queued commands back in the responses.

NB-IoT agents (:mod:`edge_agent.nbiot.uplink` has the frame) POST the wire contract's JSON,
optionally zlib-deflated (Content-Format 11050), to::

    /t                      TelemetryBatch
    /e/ev /e/st /e/cr /e/he /e/cf   DeviceEvent, AgentState, CommandResult, AgentHealth,
                            ReportedConfig
    /p                      no payload: poll for commands

Each request carries option 65000: ``ts (uint32) | HMAC-SHA256(key, ...)[:16] | agent id``;
the key is the agent's (``coap_credentials``, :mod:`cloud_hub.coap.models`). A request is
handled exactly as the same message over MQTT would be: ``hub.ingest.handle(topic, payload)``,
readings through ``hub.writer`` - and the response leaves only once they are stored, so an
agent whose request was lost or not stored in time sends it again (storage is idempotent) -
and command results applied through the hub. The 2.04 Changed response carries the commands
queued for the agent's devices (``{"cmd": [CommandRequest...], "more": bool}``), marked
``sent``, the configuration the hub wants the agent to run until it reports that version
(``"cfg": DesiredConfig``; one too large for any response is recorded as rejected, with why),
and a response MAC bound to the request's.

Answers: 2.04; 4.01 Unauthorized (no or bad auth option, unknown or revoked agent, wrong MAC,
timestamp outside ``max_clock_skew_s``: not signed); 4.00 Bad Request (payload not the
contract), 4.03 Forbidden (a message about another agent), 4.15 (unknown Content-Format);
5.03 (readings not stored in ``store_timeout_s``); 5.00 (a bug: logged). Every 4.xx is counted
as a dead letter with a diagnostic payload; nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections import Counter
from types import TracebackType
from typing import Self

import aiocoap
import structlog
from aiocoap import resource
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from pydantic import BaseModel
from sqlalchemy import select

from cloud_hub.coap.models import coap_key
from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.hub import Hub
from cloud_hub.ingest.writer import Pending
from cloud_hub.registry import CommandRow
from cloud_hub.storage import StoredReading
from device_profiles.wire import (
    ID_PATTERN,
    AgentHealth,
    AgentState,
    Channel,
    CommandRequest,
    CommandResult,
    DesiredConfig,
    DeviceEvent,
    ReportedConfig,
    WireError,
    decode,
    decode_telemetry,
    topic,
)
from device_profiles.wire.coap import (
    AUTH_OPTION,
    CF_JSON,
    CONTROL_PATHS,
    BodyError,
    Downlink,
    UnsupportedContentFormat,
    decode_body,
    encode_body,
    parse_auth_value,
    request_mac,
    response_mac,
)

__all__ = ["CoapIngress"]

log = structlog.get_logger(__name__)

_ID = re.compile(ID_PATTERN)
# header 4, token <= 8, Content-Format 3, auth option 20, payload marker 1
_RESPONSE_OVERHEAD = 40
_MAX_COMMANDS = 50  # looked at per response

#: ``/e/<code>`` of each control channel.
_MODELS: dict[Channel, type[BaseModel]] = {
    Channel.EVENTS: DeviceEvent,
    Channel.STATE: AgentState,
    Channel.COMMAND_RESULTS: CommandResult,
    Channel.HEALTH: AgentHealth,
    Channel.CONFIG_REPORTED: ReportedConfig,
}


class _Refusal(Exception):
    """A request answered with an error code (internal)."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _inflate(payload: bytes, content_format: int | None) -> bytes:
    try:
        return decode_body(payload, content_format)
    except UnsupportedContentFormat as exc:
        raise _Refusal(Code.UNSUPPORTED_CONTENT_FORMAT, str(exc)) from exc
    except BodyError as exc:
        raise _Refusal(Code.BAD_REQUEST, str(exc)) from exc


def _text(code: Code, text: str) -> aiocoap.Message:
    return aiocoap.Message(code=code, payload=text.encode()[:200])


class _Endpoint(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    def __init__(self, ingress: CoapIngress, path: str, channel: Channel | None) -> None:
        super().__init__()
        self.ingress = ingress
        self.path = path
        self.channel = channel

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.ingress.handle(self.path, self.channel, request)


class CoapIngress:
    """An aiocoap server feeding ``hub``; ``async with CoapIngress(hub, settings)`` or
    ``start()`` / ``stop()``. :attr:`port` is the bound port once started."""

    def __init__(self, hub: Hub, settings: CoapIngressSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.port = settings.port
        self.stats: Counter[str] = Counter()
        self._context: aiocoap.Context | None = None
        self._delivered: dict[str, float] = {}  # command id -> monotonic time returned
        #: agent id -> (configuration version, monotonic time) last put in a response
        self._configs_sent: dict[str, tuple[int, float]] = {}
        self._commands_waiting = False  # the last look found commands (for ``more``)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        site = resource.Site()
        site.add_resource(["t"], _Endpoint(self, "t", Channel.TELEMETRY))
        for code, channel in CONTROL_PATHS.items():
            site.add_resource(["e", code], _Endpoint(self, f"e/{code}", channel))
        site.add_resource(["p"], _Endpoint(self, "p", None))
        s = self.settings
        try:
            context = await aiocoap.Context.create_server_context(
                site, bind=(s.host, s.port), transports=["udp6"]
            )
        except OSError as exc:
            raise OSError(f"cannot serve CoAP on {s.host}:{s.port}: {exc}") from exc
        self._context = context
        self.port = self._bound_port(context)
        log.info("coap ingress serving", host=s.host, port=self.port)

    async def stop(self) -> None:
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()
            log.info("coap ingress stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _bound_port(self, context: aiocoap.Context) -> int:
        for interface in context.request_interfaces:
            manager = getattr(interface, "token_interface", None)
            if isinstance(manager, MessageManager):
                sock = manager.message_interface.transport.get_extra_info("socket")
                return int(sock.getsockname()[1])
        return self.settings.port

    # -- requests ---------------------------------------------------------------------

    async def handle(
        self, path: str, channel: Channel | None, request: aiocoap.Message
    ) -> aiocoap.Message:
        """The response to one POST; never raises (but for cancellation)."""
        self.stats["requests"] += 1
        try:
            agent_id, key, mac = await self._authenticate(path, request)
        except _Refusal as refusal:
            self.stats["unauthorized"] += 1
            self._dead_letter(f"coap:/{path}", refusal.reason, bytes(request.payload))
            return _text(refusal.code, refusal.reason)
        except Exception:  # a bug must not take the ingress down
            log.exception("coap request failed", path=path)
            self.stats["errors"] += 1
            return _text(Code.INTERNAL_SERVER_ERROR, "internal error")
        self.hub.presence.seen(agent_id)  # a sleeping agent is alive while it sends
        try:
            return await self._handle(agent_id, key, mac, channel, request)
        except _Refusal as refusal:
            self.stats["bad_requests"] += 1
            where = topic(agent_id, channel) if channel is not None else f"coap:/{path}"
            self._dead_letter(where, refusal.reason, bytes(request.payload), agent_id)
            return self._signed(key, mac, refusal.code, refusal.reason.encode()[:200], None)
        except Exception:
            log.exception("coap request failed", path=path, agent_id=agent_id)
            self.stats["errors"] += 1
            return self._signed(key, mac, Code.INTERNAL_SERVER_ERROR, b"internal error", None)

    async def _authenticate(self, path: str, request: aiocoap.Message) -> tuple[str, bytes, bytes]:
        options = request.opt.get_option(AUTH_OPTION)
        if len(options) != 1:
            raise _Refusal(Code.UNAUTHORIZED, "one auth option (65000) is required")
        try:
            agent_id, ts, mac = parse_auth_value(bytes(options[0].value))
        except WireError as exc:
            raise _Refusal(Code.UNAUTHORIZED, str(exc)) from exc
        if not _ID.match(agent_id):
            raise _Refusal(Code.UNAUTHORIZED, "agent id is not a valid id")
        key = await coap_key(self.hub.registry, agent_id)
        if key is None:
            raise _Refusal(Code.UNAUTHORIZED, f"no CoAP credential for agent {agent_id!r}")
        cf = request.opt.content_format
        expected = request_mac(
            key, agent_id, path, ts, None if cf is None else int(cf), bytes(request.payload)
        )
        if not hmac.compare_digest(mac, expected):
            raise _Refusal(Code.UNAUTHORIZED, f"bad MAC for agent {agent_id!r}")
        skew = abs(time.time() - ts)
        if skew > self.settings.max_clock_skew_s:
            raise _Refusal(Code.UNAUTHORIZED, f"timestamp {round(skew)} s off the hub's clock")
        return agent_id, key, mac

    async def _handle(
        self,
        agent_id: str,
        key: bytes,
        mac: bytes,
        channel: Channel | None,
        request: aiocoap.Message,
    ) -> aiocoap.Message:
        if channel is not None:
            cf = request.opt.content_format
            body = _inflate(bytes(request.payload), None if cf is None else int(cf))
            self._check(agent_id, channel, body)
            accepted = await self.hub.ingest.handle(topic(agent_id, channel), body)
            if accepted.readings and not await self._store(accepted.readings):
                self.stats["store_timeouts"] += 1
                reply = self._signed(
                    key, mac, Code.SERVICE_UNAVAILABLE, b"readings not stored yet", None
                )
                reply.opt.max_age = 30
                return reply
            if accepted.command_result is not None:
                await self.hub._apply_result(
                    accepted.command_result
                )  # the hub's own path for results
            self.stats[f"accepted_{channel.value}"] += 1
        else:
            self.stats["polls"] += 1
        payload, cf_out = await self._downlink(agent_id)
        return self._signed(key, mac, Code.CHANGED, payload, cf_out)

    def _check(self, agent_id: str, channel: Channel, body: bytes) -> None:
        """Refuse what ingest would only dead-letter: a broken envelope, another agent's."""
        try:
            if channel is Channel.TELEMETRY:
                sender: str | None = decode_telemetry(body)[0].agent_id
            else:
                sender = getattr(decode(_MODELS[channel], body), "agent_id", None)
        except WireError as exc:
            raise _Refusal(Code.BAD_REQUEST, str(exc)) from exc
        if sender is not None and sender != agent_id:
            raise _Refusal(Code.FORBIDDEN, f"message of agent {sender!r} sent by {agent_id!r}")

    async def _store(self, readings: list[StoredReading]) -> bool:
        """Hand readings to the writer; True once stored, False after store_timeout_s."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()

        def ack() -> None:
            if not stored.done():
                stored.set_result(None)

        deadline = loop.time() + self.settings.store_timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self.hub.writer.submit(Pending(readings, ack))
                await asyncio.shield(stored)
        except TimeoutError:
            return False
        return True

    # -- commands ---------------------------------------------------------------------

    async def _config(self, agent_id: str, budget: int) -> DesiredConfig | None:
        """The configuration ``agent_id`` has not reported yet, if it fits a response (sent
        again after ``redeliver_after_s`` until the agent reports that version). One too large
        for any response is recorded as rejected, with why, so the operator sees it."""
        row = await self.hub.registry.get_config(agent_id)
        if row is None or (row.reported_version or 0) >= row.version:
            return None
        now = time.monotonic()
        sent = self._configs_sent.get(agent_id)
        if (
            sent is not None
            and sent[0] == row.version
            and now - sent[1] < (self.settings.redeliver_after_s)
        ):
            return None
        desired = DesiredConfig(
            agent_id=agent_id,
            version=row.version,
            config=row.desired,
            issued_at=int(row.desired_at.timestamp() * 1000),
        )
        size = len(self._encode([], more=False, cfg=desired)[0])
        if size > budget:
            detail = (
                f"too large for a CoAP response: {size} bytes deflated, at most {budget} "
                "(coap.max_response_bytes)"
            )
            log.error("configuration not deliverable", agent_id=agent_id, detail=detail)
            await self.hub.registry.config_reported(agent_id, row.version, "rejected", detail)
            return None
        self._configs_sent[agent_id] = (row.version, now)
        return desired

    async def _downlink(self, agent_id: str) -> tuple[bytes, int | None]:
        """What waits for ``agent_id`` and fits one response: its pending configuration and
        the commands for its devices (those marked sent)."""
        budget = self.settings.max_response_bytes - _RESPONSE_OVERHEAD
        cfg = await self._config(agent_id, budget)
        payload, cf = await self._commands_payload(agent_id, budget, cfg)
        if not payload and cfg is not None:  # no command, or none fits beside it
            payload, cf = self._encode([], more=self._commands_waiting, cfg=cfg)
            self.stats["configs_delivered"] += 1
        return (payload, cf) if payload else (b"", None)

    async def _commands_payload(
        self, agent_id: str, budget: int, cfg: DesiredConfig | None
    ) -> tuple[bytes, int | None]:
        """The commands waiting for ``agent_id`` that fit one response beside ``cfg``,
        marked sent (nothing when there are none)."""
        now_ms = time.time_ns() // 1_000_000
        async with self.hub.registry.session() as db:
            query = (
                select(CommandRow)
                .where(
                    CommandRow.agent_id == agent_id,
                    CommandRow.status.in_(("queued", "sent")),
                    CommandRow.expires_at_ms > now_ms,
                )
                .order_by(CommandRow.created_at)
                .limit(_MAX_COMMANDS)
            )
            rows = list((await db.scalars(query)).all())
        now = time.monotonic()
        self._delivered = {
            c: t for c, t in self._delivered.items() if now - t < self.settings.redeliver_after_s
        }
        rows = [r for r in rows if r.command_id not in self._delivered]
        self._commands_waiting = bool(rows)
        if not rows:
            return b"", None
        chosen: list[CommandRequest] = []
        payload, cf = b"", CF_JSON
        for row in rows:
            request = CommandRequest(
                command_id=row.command_id,
                device_id=row.device_id,
                name=row.name,
                params=row.params,
                issued_at=int(row.created_at.timestamp() * 1000),
                expires_at=row.expires_at_ms,
            )
            more = len(chosen) + 1 < len(rows)
            candidate, candidate_cf = self._encode([*chosen, request], more=more, cfg=cfg)
            if len(candidate) > budget:
                if not chosen and cfg is not None:
                    break  # the configuration goes alone; the commands follow (``more``)
                if not chosen:
                    log.error("command too large for a CoAP response", command_id=row.command_id)
                    continue
                payload, cf = self._encode(chosen, more=True, cfg=cfg)
                break
            chosen.append(request)
            payload, cf = candidate, candidate_cf
        for command in chosen:
            self._delivered[command.command_id] = now
            before = next(r.status for r in rows if r.command_id == command.command_id)
            updated = await self.hub.registry.update_command(
                command.command_id, "sent", "delivered in a CoAP response"
            )
            if updated is not None and before == "queued":
                self.hub._command_event(updated)  # the hub's own path for results
        self.stats["commands_delivered"] += len(chosen)
        if chosen and cfg is not None:
            self.stats["configs_delivered"] += 1
        return (payload, cf) if chosen else (b"", None)

    @staticmethod
    def _encode(
        commands: list[CommandRequest], *, more: bool, cfg: DesiredConfig | None = None
    ) -> tuple[bytes, int]:
        raw = Downlink(cmd=commands, more=more, cfg=cfg).model_dump_json(exclude_defaults=True)
        return encode_body(raw.encode(), compress=True)

    @staticmethod
    def _signed(
        key: bytes, request_mac: bytes, code: Code, payload: bytes, content_format: int | None
    ) -> aiocoap.Message:
        reply = aiocoap.Message(code=code, payload=payload)
        if content_format is not None:
            reply.opt.content_format = content_format
        mac = response_mac(key, request_mac, int(code), content_format, payload)
        reply.opt.add_option(OpaqueOption(AUTH_OPTION, mac))
        return reply

    def _dead_letter(
        self, where: str, reason: str, payload: bytes, agent_id: str | None = None
    ) -> None:
        """Counted and kept as ingest's own; ``agent_id`` once authenticated (a refusal before
        that names none: the claimed id is not proven)."""
        self.hub.ingest.dead_letter(
            where, reason, payload, agent_id=agent_id, event="coap request refused"
        )
