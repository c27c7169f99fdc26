"""MQTT connection settings shared by every process, and the aiomqtt client built from them."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import aiomqtt
import paho.mqtt.client as paho
import structlog
from aiomqtt.types import PahoSocket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from iot_runtime.config_paths import ConfigPath
from iot_runtime.mqtt_inbound import (
    BufferedReads,
    InboundOverflow,
    InboundQueue,
    InboundStats,
    InboundWindow,
    MessageKey,
)

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "Client",
    "InboundOverflow",
    "InboundStats",
    "InboundWindow",
    "MqttSettings",
    "TlsSettings",
    "ack",
    "make_client",
]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")

#: PUBACK reason code of an MQTT 5 broker that had no subscriber for a message (it is gone).
NO_MATCHING_SUBSCRIBERS = 16


class TlsSettings(BaseModel):
    """TLS towards the broker. The server certificate is always verified."""

    model_config = ConfigDict(extra="forbid")

    ca_file: ConfigPath | None = Field(
        default=None, description="CA bundle; system CAs when unset."
    )
    cert_file: ConfigPath | None = Field(
        default=None, description="Client certificate (mutual TLS)."
    )
    key_file: ConfigPath | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class MqttSettings(BaseModel):
    """Where the broker is and how to talk to it."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT 5 where the broker offers it (Mosquitto 2, EMQX)."
    )
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    tls: TlsSettings | None = None
    timeout_s: float = Field(default=10.0, gt=0, description="Wait for CONNACK/PUBACK/SUBACK.")


class Client(aiomqtt.Client):
    """An aiomqtt client that never discards a received message, applies back-pressure, and
    can tell the PUBACK reason code of a QoS 1 publish.

    Received messages go to an unbounded :class:`~iot_runtime.mqtt_inbound.InboundQueue`.
    With an ``inbound`` window the client stops reading the socket while the queue holds
    ``high`` messages or more and reads again once the consumer has taken it down to ``low``:
    the broker holds the backlog and sends at the consumer's pace. Reading goes on while a
    subscribe, an unsubscribe or a QoS 1 publish awaits its reply (which is behind the
    backlog), and while paused for ``keepalive / 2`` one read pass keeps paho's keepalive fed
    (paho drops a link it has received nothing on for a keepalive). Should the queue reach
    ``cap`` all the same, the next message taken raises
    :class:`~iot_runtime.mqtt_inbound.InboundOverflow` and later ones are refused: the
    session reconnects and the broker redelivers what was not acknowledged (so a window
    needs manual acknowledgements). Counters are in ``inbound_stats``.

    aiomqtt 2 resolves a publish on PUBACK whatever its reason code, but an MQTT 5 broker
    answers reason 16 ("no matching subscribers") for a message nobody was subscribed to,
    which it then discards. :meth:`publish_reason` publishes and returns the code.

    ``admit`` (given a message's topic and payload size) is asked before a message is queued:
    one it refuses is shed, i.e. acknowledged to the broker at once (with manual
    acknowledgements) and never queued, and counted in ``inbound_stats.shed``; it costs the
    consumer nothing. With a ``fair_key`` the queue is fair between the keys of the topics
    (see :class:`~iot_runtime.mqtt_inbound.InboundQueue`).
    """

    def __init__(
        self,
        *args: Any,
        inbound: InboundWindow | None = None,
        inbound_stats: InboundStats | None = None,
        admit: Callable[[str, int], bool] | None = None,
        fair_key: MessageKey | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, max_queued_incoming_messages=0, **kwargs)
        self._watched: set[int] = set()
        self._reasons: dict[int, int] = {}
        self._admit = admit
        self._inbound = InboundQueue(self._taken, fair_key)
        self._queue = self._inbound
        self._window = inbound
        self.inbound_stats = inbound_stats if inbound_stats is not None else InboundStats()
        #: the socket's fd and its read callback, while the socket is open
        self._reader: tuple[int, Callable[[], None]] | None = None
        self._paused = False
        self._overflowed = False
        self._awaiting_replies = 0
        self._keepalive_timer: asyncio.TimerHandle | None = None
        #: counts at the start of the back-pressure episode under way (logged when it ends)
        self._episode: tuple[float, int, float] | None = None

    # -- reading the socket, or not ---------------------------------------------------------

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        fd = sock.fileno()
        client._sock = BufferedReads(sock)  # one recv a burst, not three a packet

        def read() -> None:
            # as aiomqtt's reader, but one that stops between packets once paused
            try:
                while True:
                    client.loop_read()
                    sock = client._sock  # buffered, or SSL-decoded and not yet read: go on
                    if self._paused or not isinstance(sock, BufferedReads) or not sock.pending():
                        break
            except Exception as exc:  # noqa: BLE001 - a broken link: the session ends with it
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:  # paho calls on_socket_open from the connecting thread
            self._reader = (fd, read)
            self._paused = False
            if self._overflowed:  # a client reused after an overflow starts afresh
                self._overflowed = False
                self._inbound.reset()
            self._loop.add_reader(fd, read)
            self._misc_task = self._loop.create_task(self._misc_loop())

        self._loop.call_soon_threadsafe(register)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: PahoSocket) -> None:
        super()._on_socket_close(client, userdata, sock)
        self._reader = None
        self._end_pause()
        self._end_episode("connection closed")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        stats, window = self.inbound_stats, self._window
        if self._overflowed:
            stats.overflowed += 1  # not acknowledged: redelivered after the reconnect
            return
        if self._admit is not None and not self._admit(message.topic, len(message.payload)):
            stats.shed += 1
            if message.qos > 0 and client._manual_ack:
                client.ack(message.mid, message.qos)
            return
        queued = self._inbound.qsize()
        if window is not None and queued >= window.cap:
            self._overflow(queued, window.cap)
            return
        self._inbound.put_nowait(aiomqtt.Message._from_paho_message(message))
        stats.queued = queued + 1
        stats.peak = max(stats.peak, stats.queued)
        if window is not None and stats.queued >= window.high:
            self._pause()

    def _taken(self) -> None:
        stats = self.inbound_stats
        stats.queued = self._inbound.qsize()
        if self._window is None:
            return
        if self._paused and stats.queued <= self._window.low:
            self._resume()
        if stats.queued == 0:
            self._end_episode("caught up")

    def _pause(self) -> None:
        if self._paused or self._reader is None or self._awaiting_replies or self._overflowed:
            return
        self._loop.remove_reader(self._reader[0])
        self._paused = True
        stats = self.inbound_stats
        stats.pauses += 1
        stats.paused_since = time.monotonic()
        if self._episode is None:
            self._episode = (time.monotonic(), stats.pauses - 1, stats.paused_s)
            log.info(
                "inbound back-pressure: reading paused, the broker holds the backlog",
                client_id=self.identifier,
                queued=stats.queued,
            )
        self._arm_keepalive_read()

    def _resume(self) -> None:
        if not self._paused:
            return
        self._end_pause()
        if self._reader is not None:
            fd, read = self._reader
            self._loop.add_reader(fd, read)
            self._loop.call_soon(read)  # what SSL decoded already does not wake the reader

    def _end_pause(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None
        if not self._paused:
            return
        self._paused = False
        stats = self.inbound_stats
        if stats.paused_since is not None:
            stats.paused_s += time.monotonic() - stats.paused_since
            stats.paused_since = None

    def _arm_keepalive_read(self) -> None:
        self._keepalive_timer = self._loop.call_later(self._keepalive / 2, self._keepalive_read)

    def _keepalive_read(self) -> None:
        """Paused for keepalive / 2: one read pass (a packet), so that paho, which drops a
        link it has received nothing on for a keepalive, keeps it (and sees a PINGRESP)."""
        self._keepalive_timer = None
        if not self._paused or self._reader is None:
            return
        self.inbound_stats.keepalive_reads += 1
        self._reader[1]()
        if self._paused:
            self._arm_keepalive_read()

    def _overflow(self, queued: int, cap: int) -> None:
        self._overflowed = True
        stats = self.inbound_stats
        stats.overflows += 1
        stats.overflowed += 1
        self._pause()
        log.error(
            "inbound queue at its cap: reconnecting, the broker redelivers what was not "
            "acknowledged",
            client_id=self.identifier,
            queued=queued,
            cap=cap,
        )
        self._inbound.fail(InboundOverflow(queued, cap))

    def _end_episode(self, why: str) -> None:
        if self._episode is None:
            return
        started, pauses, paused_s = self._episode
        self._episode = None
        stats = self.inbound_stats
        log.info(
            "inbound back-pressure ended",
            client_id=self.identifier,
            why=why,
            duration_s=round(time.monotonic() - started, 3),
            pauses=stats.pauses - pauses,
            paused_s=round(stats.paused_seconds() - paused_s, 3),
            peak_queued=stats.peak,
            overflowed=stats.overflowed,
        )

    @contextlib.contextmanager
    def _pending_call(self, mid: int, value: _T, pending_dict: dict[int, _T]) -> Iterator[None]:
        # a SUBACK, UNSUBACK or PUBACK is behind the backlog: read until it is in (a QoS 0
        # publish, not in paho's outgoing messages, only waits for the socket to write)
        awaits_reply = (
            pending_dict is not self._pending_publishes or mid in self._client._out_messages
        )
        if not awaits_reply:
            with super()._pending_call(mid, value, pending_dict):
                yield
            return
        self._awaiting_replies += 1
        self._resume()
        try:
            with super()._pending_call(mid, value, pending_dict):
                yield
        finally:
            self._awaiting_replies -= 1

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if mid in self._watched:
            self._reasons[mid] = int(reason_code.value)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_reason(
        self, topic: str, payload: bytes, *, qos: int, retain: bool = False
    ) -> int:
        """Publish as :meth:`publish` does and return the broker's PUBACK reason code (0 for
        success, and always for QoS 0 and MQTT 3.1.1)."""
        info = self._client.publish(topic, payload, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if qos == 0:
            return 0
        self._watched.add(info.mid)
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._wait_for(confirmation.wait(), timeout=None)
            return self._reasons.get(info.mid, 0)
        finally:
            self._watched.discard(info.mid)
            self._reasons.pop(info.mid, None)


def make_client(
    settings: MqttSettings,
    client_id: str,
    *,
    persistent_session: bool,
    session_expiry_s: int = 0,
    will: aiomqtt.Will | None = None,
    manual_ack: bool = False,
    inbound: InboundWindow | None = None,
    inbound_stats: InboundStats | None = None,
    admit: Callable[[str, int], bool] | None = None,
    fair_key: MessageKey | None = None,
) -> Client:
    """An aiomqtt client for ``settings``.

    With ``persistent_session`` the broker keeps the session (subscriptions and queued QoS 1
    messages) while the client is away: clean session off in MQTT 3.1.1, clean start off with
    a session expiry in MQTT 5. With ``manual_ack`` a QoS 1 message is acknowledged only when
    :func:`ack` is called for it, so one that was received but not yet processed is sent again
    after a crash.

    Received messages are never discarded (see :class:`Client`); with an ``inbound`` window
    (manual acknowledgements only) the client stops reading the socket at its high watermark,
    and ``inbound_stats`` (kept across the clients of one session) counts what it did;
    ``admit`` and ``fair_key`` are :class:`Client`'s.
    """
    if inbound is not None and not manual_ack:
        raise ValueError(
            "an inbound window needs manual_ack: a refused message must be redelivered"
        )
    v5 = settings.protocol == "5"
    properties = None
    if v5 and persistent_session:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = session_expiry_s
    client = Client(
        settings.host,
        settings.port,
        identifier=client_id,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        clean_session=None if v5 else not persistent_session,
        clean_start=(not persistent_session) if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        keepalive=settings.keepalive_s,
        will=will,
        tls_context=settings.tls.context() if settings.tls else None,
        timeout=settings.timeout_s,
        inbound=inbound,
        inbound_stats=inbound_stats,
        admit=admit,
        fair_key=fair_key,
    )
    if manual_ack:
        # aiomqtt 2 has no API for paho's manual acknowledgements yet (empicano/aiomqtt#345);
        # set before connecting, since a persistent session's messages arrive at once
        client._client.manual_ack_set(True)
    return client


def ack(client: aiomqtt.Client, message: aiomqtt.Message) -> None:
    """Acknowledge a message received with ``manual_ack`` (PUBACK for QoS 1)."""
    if message.qos > 0:
        client._client.ack(message.mid, message.qos)
