"""MQTT connection settings shared by every process, and the aiomqtt client built from them."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from iot_runtime.config_paths import ConfigPath

__all__ = [
    "NO_MATCHING_SUBSCRIBERS",
    "Client",
    "MqttSettings",
    "TlsSettings",
    "ack",
    "make_client",
]

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
    """An aiomqtt client that can also tell the PUBACK reason code of a QoS 1 publish.

    aiomqtt 2 resolves a publish on PUBACK whatever its reason code, but an MQTT 5 broker
    answers reason 16 ("no matching subscribers") for a message nobody was subscribed to,
    which it then discards. :meth:`publish_reason` publishes and returns the code.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watched: set[int] = set()
        self._reasons: dict[int, int] = {}

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
) -> Client:
    """An aiomqtt client for ``settings``.

    With ``persistent_session`` the broker keeps the session (subscriptions and queued QoS 1
    messages) while the client is away: clean session off in MQTT 3.1.1, clean start off with
    a session expiry in MQTT 5. With ``manual_ack`` a QoS 1 message is acknowledged only when
    :func:`ack` is called for it, so one that was received but not yet processed is sent again
    after a crash.
    """
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
        max_queued_incoming_messages=10_000,
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
