"""MQTT uplink: birth and Last Will, publishing the outbox, receiving commands, reconnecting.

Every message is QoS 1. A control message leaves the outbox after the broker's PUBACK; a
telemetry batch (with ``confirm="stored"``, the default) only when the hub acknowledges that
it stored it, on the agent's ``acks`` channel: the outbox sends unconfirmed batches again
after a reconnect or a timeout (see :class:`~edge_agent.outbox.spool.DiskOutbox`). A PUBACK with
reason 16 ("no matching subscribers", MQTT 5) means the broker discarded the message (e.g. it
restarted without the hub's session): the message stays in the outbox and is published again
after a back-off (not health reports, which the next one supersedes, nor retained messages,
which the broker keeps); telemetry for as long as it takes, events and command results for
``UNHEARD_CONTROL_GIVE_UP_S`` (a hub that does not consume them must not hold telemetry back). The session is
persistent, so commands published while the agent is away are delivered when it returns.
Reconnects back off exponentially (capped) with jitter so a county's agents do not reconnect
in lockstep after a broker restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import aiomqtt
import structlog

from device_profiles.wire import (
    QOS,
    SESSION_EXPIRY_S,
    AgentState,
    Channel,
    CommandRequest,
    DesiredConfig,
    DeviceInfo,
    StoredAck,
    WireError,
    agent_client_id,
    decode,
    encode,
    topic,
)
from edge_agent.cancellation import raise_if_cancelling
from edge_agent.outbox.memory import OutboxLike, Outgoing
from iot_runtime.mqtt import NO_MATCHING_SUBSCRIBERS, Client, MqttSettings, make_client

__all__ = ["MqttUplink"]

log = structlog.get_logger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
#: back-off of a message published again after "no matching subscribers"
UNHEARD_RETRY_MIN_S = 1.0
UNHEARD_RETRY_MAX_S = 30.0
#: how long a control message (event, command result) is retried for want of a subscriber
UNHEARD_CONTROL_GIVE_UP_S = 60.0

Confirm = Literal["stored", "broker"]


class MqttUplink:
    def __init__(
        self,
        agent_id: str,
        settings: MqttSettings,
        outbox: OutboxLike,
        devices: list[DeviceInfo],
        on_command: Callable[[CommandRequest], Coroutine[Any, Any, None]],
        software_version: str = "",
        on_config: Callable[[DesiredConfig], Coroutine[Any, Any, object]] | None = None,
        confirm: Confirm = "stored",
    ) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.devices = devices
        self.on_command = on_command
        self.software_version = software_version
        self.on_config = on_config
        self.confirm = confirm
        self.connected = asyncio.Event()
        self.connects = 0
        self.bad_commands = 0
        #: publishes the broker answered "no matching subscribers" (kept and published again)
        self.unheard = 0
        #: control messages given up after UNHEARD_CONTROL_GIVE_UP_S without a subscriber
        self.unheard_dropped = 0
        #: stored acknowledgements received, and the batches they confirmed
        self.acks_received = 0
        self.batches_confirmed = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _client(self) -> Client:
        offline = AgentState(agent_id=self.agent_id, state="offline")
        will = aiomqtt.Will(
            topic(self.agent_id, Channel.STATE), encode(offline), qos=QOS, retain=True
        )
        return make_client(
            self.settings,
            agent_client_id(self.agent_id),
            persistent_session=True,
            session_expiry_s=SESSION_EXPIRY_S,
            will=will,
        )

    async def run(self) -> None:
        """Stay connected until cancelled."""
        failures = 0
        while True:
            try:
                async with self._client() as client:
                    failures = 0
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                error = exc
            self.connected.clear()
            failures += 1
            delay = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2 ** (failures - 1))
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
            log_method = log.warning if failures == 1 else log.debug
            log_method("uplink down, reconnecting", error=str(error), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)

    async def _session(self, client: Client) -> None:
        await client.subscribe(topic(self.agent_id, Channel.COMMANDS), qos=QOS)
        if self.on_config is not None:
            await client.subscribe(topic(self.agent_id, Channel.CONFIG_DESIRED), qos=QOS)
        if self.confirm == "stored":
            await client.subscribe(topic(self.agent_id, Channel.ACKS), qos=Channel.ACKS.qos)
            # acknowledgements published while the link was down are lost: send again
            self.outbox.rewind()
        await client.publish(
            topic(self.agent_id, Channel.STATE), encode(self._birth()), qos=QOS, retain=True
        )
        self.connects += 1
        self.connected.set()
        log.info("uplink connected", broker=f"{self.settings.host}:{self.settings.port}")
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._publish_loop(client), name="uplink-publish")
                group.create_task(self._receive_loop(client), name="uplink-receive")
        except ExceptionGroup as failed:
            # a broken link fails both loops: surface it as the MQTT error it is
            errors = [e for e in failed.exceptions if isinstance(e, aiomqtt.MqttError)]
            if len(errors) != len(failed.exceptions):
                raise
            raise errors[0] from failed
        except asyncio.CancelledError:
            # a clean stop sends no Last Will, so say goodbye ourselves (best effort)
            offline = AgentState(
                agent_id=self.agent_id, state="offline", ts=time.time_ns() // 1_000_000
            )
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await client.publish(
                        topic(self.agent_id, Channel.STATE), encode(offline), qos=QOS, retain=True
                    )
            raise

    def _birth(self) -> AgentState:
        return AgentState(
            agent_id=self.agent_id,
            state="online",
            ts=time.time_ns() // 1_000_000,
            software_version=self.software_version,
            devices=list(self.devices),
        )

    def announce(self) -> None:
        """Publish the birth message again (through the outbox), e.g. after the devices changed."""
        self.outbox.put_control(Channel.STATE, self._birth())

    async def _publish_loop(self, client: Client) -> None:
        unheard = 0  # in a row
        unheard_since = 0.0
        while True:
            raise_if_cancelling()  # aiomqtt's publish (wait_for, 3.11) may swallow the stop
            item = await self.outbox.next()
            reason = await client.publish_reason(
                topic(self.agent_id, item.channel),
                encode(item.message),
                qos=item.channel.qos,
                retain=item.channel.retained,
            )
            if reason == NO_MATCHING_SUBSCRIBERS and _must_be_heard(item):
                self.unheard += 1
                unheard += 1
                now = time.monotonic()
                unheard_since = unheard_since if unheard > 1 else now
                if (
                    item.channel is not Channel.TELEMETRY
                    and now - unheard_since > UNHEARD_CONTROL_GIVE_UP_S
                ):
                    # nobody has listened for a minute: the hub does not consume this
                    # channel; do not hold telemetry behind it for ever
                    self.unheard_dropped += 1
                    log.warning(
                        "broker still has no subscriber for the message; given up",
                        channel=item.channel.value,
                        kind=type(item.message).__name__,
                    )
                    self.outbox.ack(item)
                    unheard = 0
                    continue
                delay = min(UNHEARD_RETRY_MAX_S, UNHEARD_RETRY_MIN_S * 2 ** (unheard - 1))
                (log.warning if unheard == 1 else log.debug)(
                    "broker has no subscriber for the message (is the hub connected?); "
                    "kept, publishing again",
                    channel=item.channel.value,
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                continue  # the outbox hands out the same message again
            if unheard:
                log.info("broker has a subscriber again", channel=item.channel.value)
                unheard = 0
            if item.channel is Channel.TELEMETRY and self.confirm == "stored":
                self.outbox.sent(item)  # kept until the hub says it stored it
            else:
                self.outbox.ack(item)

    def _stored(self, payload: bytes | str) -> None:
        try:
            ack = decode(StoredAck, payload)
        except WireError as exc:
            log.warning("malformed stored acknowledgement ignored", error=str(exc))
            return
        if ack.agent_id != self.agent_id:
            log.warning("stored acknowledgement for another agent ignored", agent=ack.agent_id)
            return
        self.acks_received += 1
        self.batches_confirmed += self.outbox.stored(ack.seqs)

    async def _desired(self, payload: bytes | str) -> None:
        assert self.on_config is not None
        try:
            desired = decode(DesiredConfig, payload)
        except WireError as exc:
            log.warning("malformed desired configuration ignored", error=str(exc))
            return
        task = asyncio.create_task(self.on_config(desired), name=f"config-{desired.version}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive_loop(self, client: Client) -> None:
        acks = topic(self.agent_id, Channel.ACKS)
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | str):
                payload = b""
            if message.topic.matches(acks):
                self._stored(payload)
                continue
            if self.on_config is not None and message.topic.matches(
                topic(self.agent_id, Channel.CONFIG_DESIRED)
            ):
                await self._desired(payload)
                continue
            try:
                request = decode(CommandRequest, payload)
            except WireError as exc:
                self.bad_commands += 1
                log.warning("malformed command ignored", topic=str(message.topic), error=str(exc))
                continue
            task = asyncio.create_task(
                self.on_command(request), name=f"command-{request.command_id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _must_be_heard(item: Outgoing) -> bool:
    """Whether a message the broker discarded for want of a subscriber is published again:
    not a retained one (the broker keeps it) nor a health report (the next one replaces it)."""
    return not item.channel.retained and item.channel is not Channel.HEALTH
