"""MQTT uplink: birth and Last Will, publishing the outbox, receiving commands, reconnecting.

Every message is QoS 1 and leaves the outbox only after the broker's PUBACK. The session is
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
from typing import Any

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
    WireError,
    agent_client_id,
    decode,
    encode,
    topic,
)
from edge_agent.cancellation import raise_if_cancelling
from edge_agent.outbox import OutboxLike
from iot_runtime.mqtt import MqttSettings, make_client

__all__ = ["MqttUplink"]

log = structlog.get_logger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0


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
    ) -> None:
        self.agent_id = agent_id
        self.settings = settings
        self.outbox = outbox
        self.devices = devices
        self.on_command = on_command
        self.software_version = software_version
        self.on_config = on_config
        self.connected = asyncio.Event()
        self.connects = 0
        self.bad_commands = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _client(self) -> aiomqtt.Client:
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

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(topic(self.agent_id, Channel.COMMANDS), qos=QOS)
        if self.on_config is not None:
            await client.subscribe(topic(self.agent_id, Channel.CONFIG_DESIRED), qos=QOS)
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

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        while True:
            raise_if_cancelling()  # aiomqtt's publish (wait_for, 3.11) may swallow the stop
            item = await self.outbox.next()
            await client.publish(
                topic(self.agent_id, item.channel),
                encode(item.message),
                qos=QOS,
                retain=item.channel.retained,
            )
            self.outbox.ack(item)

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

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | str):
                payload = b""
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
