"""NB-IoT uplink: the outbox as confirmable CoAP POSTs through the modem's UDP socket.

An NB-IoT sensor sleeps (PSM) and cannot hold an MQTT session, so the uplink works in cycles:
wake, wait for the network (``wait_registered``), send the birth message once per start, drain
the outbox one CoAP message per outbox item (telemetry batches split to fit a datagram), run
the commands the hub returns in its responses and send their results, then sleep
``uplink_interval_s`` - or wake early when an event or a command result is queued
(:class:`WakingOutbox`). An item leaves the outbox only after the hub's 2.xx response, which
the hub sends only once the readings are stored.

CoAP (RFC 7252) is built here over the modem's :class:`~drivers.nbiot.UdpSocket`, with
aiocoap's message encoding only: confirmable POST, retransmission after ACK_TIMEOUT x
uniform(1, 1.5), doubling, MAX_RETRANSMIT times; piggybacked or separate responses (an empty
ACK, then a confirmable response which is acknowledged).

The frame (the hub's :mod:`cloud_hub.coap.ingress` parses the same)::

    POST /t                 TelemetryBatch
    POST /e/ev /e/st /e/cr /e/he /e/cf   DeviceEvent, AgentState, CommandResult,
                            AgentHealth, ReportedConfig
    POST /p                 (no payload) poll for commands
    Content-Format          50 (application/json: the wire contract's JSON) or
                            11050 (application/json, deflate: zlib-compressed)
    option 65000 (elective) ts (uint32 s, big-endian) | mac (16 bytes) | agent id (ASCII)
    mac  = HMAC-SHA256(key, "citypulse coap request v1\\0" | agent id | "\\0" | path | "\\0"
                            | ts | content format (uint16, 0xFFFF: none) | payload)[:16]
    key  = HMAC-SHA256(secret, "citypulse coap key v1")

    2.04 Changed            {"cmd": [CommandRequest, ...], "more": bool} or no payload
    option 65000            HMAC-SHA256(key, "citypulse coap response v1\\0" | request mac
                            | code (uint8) | content format (uint16) | payload)[:16]

Every response but 4.01 carries the response MAC, bound to the request's, so a spoofed or
replayed datagram can neither inject commands nor make the agent drop data. A 4.xx (other than
4.01) means the hub can never accept the message: it is dropped and counted; 4.01 and 5.xx
fail the cycle and the message is sent again later.

Errors: :class:`NbIotUplinkError` and its subclasses (the tree: :mod:`edge_agent.nbiot.coap`).

The pieces: :mod:`edge_agent.nbiot.coap` (the messages: requests, datagrams, payloads, errors),
:mod:`edge_agent.outbox.waking` (:class:`WakingOutbox`), and :class:`NbIotUplink` (the cycle and
the exchange) here; this module also gathers the others' public names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

import structlog
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from pydantic import BaseModel

from device_profiles.wire import (
    AgentState,
    Channel,
    CommandRequest,
    DesiredConfig,
    DeviceInfo,
    ModemHealth,
    TelemetryBatch,
)
from device_profiles.wire.coap import (
    AUTH_OPTION,
    CF_JSON,
    CF_JSON_DEFLATE,
    auth_value,
    derive_key,
    request_mac,
    response_mac,
)
from drivers import DriverError
from drivers.nbiot import NbIotModem, UdpSocket
from drivers.nbiot.modem_probe import read_report
from drivers.nbiot.modem_report import to_health
from edge_agent.nbiot.coap import (
    PATHS,
    POLL_PATH,
    CoapRefused,
    CoapReply,
    CoapRequest,
    CoapReset,
    CoapTimeout,
    Downlink,
    FramingError,
    NbIotUplinkError,
    OversizedMessage,
    ResponseNotAuthentic,
    build_request,
    decode_body,
    decode_downlink,
    empty_message,
    encode_body,
    parse_datagram,
    split_batch,
)
from edge_agent.nbiot.settings import NbIotUplinkSettings
from edge_agent.outbox.memory import OutboxLike, Outgoing
from edge_agent.outbox.waking import URGENT_CHANNELS, WakingOutbox

__all__ = [
    "AUTH_OPTION",
    "CF_JSON",
    "CF_JSON_DEFLATE",
    "PATHS",
    "POLL_PATH",
    "URGENT_CHANNELS",
    "CoapRefused",
    "CoapReply",
    "CoapRequest",
    "CoapReset",
    "CoapTimeout",
    "Downlink",
    "FramingError",
    "NbIotUplink",
    "NbIotUplinkError",
    "OversizedMessage",
    "ResponseNotAuthentic",
    "WakingOutbox",
    "auth_value",
    "build_request",
    "decode_body",
    "decode_downlink",
    "derive_key",
    "encode_body",
    "parse_datagram",
    "request_mac",
    "response_mac",
    "split_batch",
]

log = structlog.get_logger(__name__)

TOKEN_BYTES = 4
ACK_RANDOM_FACTOR = 1.5
_MAX_ROUNDS = 20  # drain / linger / poll rounds in one wake at most


class NbIotUplink:
    """The agent's uplink over an NB-IoT modem; same role as :class:`MqttUplink`.

    ``connected`` is set while the last cycle reached the hub; ``connects`` counts the
    times it went from not reaching the hub to reaching it; ``asleep`` is set between cycles.
    ``wake`` (e.g. :attr:`WakingOutbox.urgent`) ends the sleep early.
    """

    def __init__(
        self,
        agent_id: str,
        settings: NbIotUplinkSettings,
        outbox: OutboxLike,
        devices: list[DeviceInfo],
        on_command: Callable[[CommandRequest], Coroutine[Any, Any, None]],
        software_version: str = "",
        *,
        wake: asyncio.Event | None = None,
        modem: NbIotModem | None = None,
        on_config: Callable[[DesiredConfig], Coroutine[Any, Any, object]] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.devices = devices
        self.on_command = on_command
        #: applies a configuration the hub sends in a response (its report goes up in the
        #: outbox); None: configurations are ignored
        self.on_config = on_config
        self.software_version = software_version
        self.wake = wake if wake is not None else asyncio.Event()
        self.modem = modem
        self.connected = asyncio.Event()
        #: Set while the uplink sleeps between cycles (the modem may enter PSM).
        self.asleep = asyncio.Event()
        self.connects = 0
        self.cycles = 0
        self.messages_sent = 0
        self.retransmissions = 0
        self.rejected_messages = 0
        self.oversized_messages = 0
        self.bad_responses = 0
        self.commands_received = 0
        #: What the modem said when last asked (every ``modem_check_interval_s``, in a wake);
        #: the health report carries it. None until the first wake reached the network.
        self.modem_health: ModemHealth | None = None
        self._modem_checked_at = 0.0  # monotonic
        self._configs_started: set[int] = set()
        self._key = derive_key(settings.secret.get_secret_value())
        self._host = str(settings.hub_host)
        self._mid = random.randrange(0x10000)  # noqa: S311 - message ids need no secrecy
        self._recent_tokens: deque[bytes] = deque(maxlen=32)
        self._born = False
        self._more = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the cycle --------------------------------------------------------------------

    async def run(self) -> None:
        """Wake, send, sleep; until cancelled."""
        s = self.settings
        modem = self.modem if self.modem is not None else NbIotModem(s.modem)
        failures = 0
        try:
            while True:
                try:
                    await self._cycle(modem)
                except (DriverError, NbIotUplinkError, TimeoutError) as exc:
                    failures += 1
                    self.connected.clear()
                    delay = min(s.uplink_interval_s, s.retry_min_s * 2 ** (failures - 1))
                    delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter
                    (log.warning if failures == 1 else log.debug)(
                        "nbiot uplink cycle failed",
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self.asleep.set()
                try:
                    with contextlib.suppress(TimeoutError):
                        # asyncio.timeout, never wait_for: see edge_agent.cancellation
                        async with asyncio.timeout(s.uplink_interval_s):
                            await self.wake.wait()
                finally:
                    self.asleep.clear()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.modem is None:
                await modem.close()

    async def _cycle(self, modem: NbIotModem) -> None:
        s = self.settings
        self.cycles += 1
        self.wake.clear()
        status = await modem.wait_registered(s.register_timeout_s)
        log.debug("nbiot awake", rssi_dbm=status.rssi_dbm, roaming=status.roaming)
        await self._check_modem(modem)
        async with await modem.open_udp(s.local_port) as sock:
            self._more = False
            need_poll = True
            if not self._born:
                await self._send(sock, Channel.STATE, self._birth())
                self._born = True
                need_poll = self._more
                self._mark_connected()
            for _ in range(_MAX_ROUNDS):
                if await self._drain(sock):
                    need_poll = self._more
                if self._tasks:
                    _, pending = await asyncio.wait(self._tasks, timeout=s.command_linger_s)
                    if pending:
                        break  # their results go up in a later cycle
                    continue
                if not need_poll:
                    break
                await self._post(sock, POLL_PATH, b"", None)
                need_poll = self._more
        self._mark_connected()

    async def _check_modem(self, modem: NbIotModem) -> None:
        """Read the modem's figures for the health report, if due; a failure is logged and
        costs only the figures (the cycle goes on, or fails on its own)."""
        now = time.monotonic()
        due = self._modem_checked_at + self.settings.modem_check_interval_s
        if self.modem_health is not None and now < due:
            return
        try:
            report = await read_report(modem)
        except DriverError as exc:
            log.warning("nbiot modem figures not read", error=f"{type(exc).__name__}: {exc}")
            return
        self.modem_health = to_health(report)
        self._modem_checked_at = now
        log.debug("nbiot modem figures", verdict=self.modem_health.verdict, csq=report.csq)

    def _mark_connected(self) -> None:
        if not self.connected.is_set():
            self.connects += 1
            self.connected.set()
            log.info("nbiot uplink reached the hub", hub=f"{self._host}:{self.settings.hub_port}")

    def announce(self) -> None:
        """Send the birth message again in the next cycle (through the outbox), e.g. after
        a remote configuration changed the devices: the hub learns the new device list."""
        self.outbox.put_control(Channel.STATE, self._birth())

    def _birth(self) -> AgentState:
        return AgentState(
            agent_id=self.agent_id,
            state="online",
            ts=time.time_ns() // 1_000_000,
            software_version=self.software_version,
            devices=self.devices,
            report_interval_s=self.settings.uplink_interval_s,
        )

    async def _drain(self, sock: UdpSocket) -> int:
        """Send outbox items until none comes for ``drain_idle_s``; how many were sent."""
        count = 0
        while True:
            try:
                async with asyncio.timeout(self.settings.drain_idle_s):
                    item = await self.outbox.next()
            except TimeoutError:
                return count
            await self._send_item(sock, item)
            self.outbox.ack(item)
            count += 1

    async def _send_item(self, sock: UdpSocket, item: Outgoing) -> None:
        try:
            if item.channel is Channel.TELEMETRY and isinstance(item.message, TelemetryBatch):
                for part in split_batch(item.message, self._fits):
                    await self._send(sock, Channel.TELEMETRY, part)
            else:
                await self._send(sock, item.channel, item.message)
        except OversizedMessage as exc:
            self.oversized_messages += 1
            log.error("message dropped: too large for NB-IoT", channel=item.channel, error=str(exc))
        except CoapRefused as exc:
            if not exc.permanent:
                raise
            self.rejected_messages += 1
            log.error("message refused by the hub, dropped", channel=item.channel, error=str(exc))

    def _fits(self, batch: TelemetryBatch) -> bool:
        payload, cf = encode_body(batch, compress=self.settings.compress)
        request = self._request(PATHS[Channel.TELEMETRY], payload, cf, mid=0)
        return len(request.datagram) <= self.settings.max_datagram

    async def _send(self, sock: UdpSocket, channel: Channel, message: BaseModel) -> None:
        path = PATHS.get(channel)
        if path is None:
            raise OversizedMessage(f"channel {channel.value!r} cannot go over CoAP")
        payload, cf = encode_body(message, compress=self.settings.compress)
        await self._post(sock, path, payload, cf)
        self.messages_sent += 1

    # -- one exchange -----------------------------------------------------------------

    def _request(
        self, path: Sequence[str], payload: bytes, cf: int | None, mid: int | None = None
    ) -> CoapRequest:
        if mid is None:
            self._mid = (self._mid + 1) & 0xFFFF
            mid = self._mid
        return build_request(
            key=self._key,
            agent_id=self.agent_id,
            path=path,
            payload=payload,
            content_format=cf,
            mid=mid,
            token=secrets.token_bytes(TOKEN_BYTES),
            ts=int(time.time()),
        )

    async def _post(
        self, sock: UdpSocket, path: Sequence[str], payload: bytes, cf: int | None
    ) -> None:
        """POST and handle the response: commands run, ``_more`` noted."""
        request = self._request(path, payload, cf)
        if len(request.datagram) > self.settings.max_datagram:
            raise OversizedMessage(
                f"{len(request.datagram)}-byte datagram exceeds {self.settings.max_datagram}"
            )
        self._recent_tokens.append(request.token)
        reply = await self._exchange(sock, request)
        if reply.code == int(Code.UNAUTHORIZED):
            raise CoapRefused(reply.code, reply.payload.decode("utf-8", "replace"))
        expected = response_mac(
            self._key, request.mac, reply.code, reply.content_format, reply.payload
        )
        if reply.mac is None or not hmac.compare_digest(reply.mac, expected):
            self.bad_responses += 1
            raise ResponseNotAuthentic(f"response {Code(reply.code)} has no valid MAC")
        if reply.code >> 5 != 2:
            raise CoapRefused(reply.code, reply.payload.decode("utf-8", "replace"))
        try:
            downlink = decode_downlink(reply.payload, reply.content_format)
        except FramingError:
            self.bad_responses += 1
            raise
        self._more = downlink.more
        for command in downlink.cmd:
            self.commands_received += 1
            log.info("command received over CoAP", command_id=command.command_id)
            task = asyncio.create_task(
                self.on_command(command), name=f"command-{command.command_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if downlink.cfg is not None and self.on_config is not None:
            version = downlink.cfg.version
            if version not in self._configs_started:  # the hub repeats it until reported
                self._configs_started.add(version)
                log.info("configuration received over CoAP", version=version)
                config_task = asyncio.create_task(
                    self._apply_config(downlink.cfg), name=f"config-{version}"
                )
                self._tasks.add(config_task)
                config_task.add_done_callback(self._tasks.discard)

    async def _apply_config(self, desired: DesiredConfig) -> None:
        assert self.on_config is not None
        await self.on_config(desired)  # never raises: the agent reports applied or rejected

    async def _exchange(self, sock: UdpSocket, request: CoapRequest) -> CoapReply:
        """Send ``request`` with CoAP's retransmissions; the response (piggybacked or
        separate)."""
        s = self.settings
        timeout = random.uniform(s.ack_timeout_s, s.ack_timeout_s * ACK_RANDOM_FACTOR)  # noqa: S311
        loop = asyncio.get_running_loop()
        for attempt in range(s.max_retransmit + 1):
            if attempt:
                self.retransmissions += 1
                log.debug("coap retransmission", mid=request.mid, attempt=attempt)
            await sock.send(self._host, s.hub_port, request.datagram)
            outcome = await self._await_reply(sock, request, loop.time() + timeout)
            if isinstance(outcome, CoapReply):
                return outcome
            if outcome == "acked":
                break
            timeout *= 2
        else:
            raise CoapTimeout(
                f"no ACK for MID {request.mid} after {s.max_retransmit} retransmissions"
            )
        outcome = await self._await_reply(sock, request, loop.time() + s.response_timeout_s)
        if isinstance(outcome, CoapReply):
            return outcome
        raise CoapTimeout(f"no separate response for MID {request.mid} in {s.response_timeout_s} s")

    async def _await_reply(
        self, sock: UdpSocket, request: CoapRequest, deadline: float
    ) -> CoapReply | Literal["acked"] | None:
        """The response to ``request``, "acked" on an empty ACK, None at ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                host, port, data = await sock.receive(remaining)
            except TimeoutError:
                return None
            if host != self._host or port != self.settings.hub_port:
                log.debug("datagram from a stranger ignored", host=host, port=port)
                continue
            try:
                reply = parse_datagram(data)
            except FramingError as exc:
                self.bad_responses += 1
                log.debug("unparsable datagram ignored", error=str(exc))
                continue
            if reply.mtype == Type.ACK and reply.mid == request.mid:
                if reply.code == int(Code.EMPTY):
                    return "acked"
                if reply.token == request.token and reply.is_response:
                    return reply
            elif reply.mtype == Type.RST and reply.mid == request.mid:
                raise CoapReset(f"hub reset MID {request.mid}")
            elif reply.mtype in (Type.CON, Type.NON) and reply.is_response:
                known = reply.token in self._recent_tokens
                if reply.mtype == Type.CON:  # acknowledge (or reset) a separate response
                    answer = Type.ACK if known else Type.RST
                    await sock.send(self._host, port, empty_message(answer, reply.mid))
                if reply.token == request.token:
                    return reply
