"""The hub process's core: MQTT session, ingest and command dispatch.

Commands are persisted as ``queued`` before anything is sent, published to the agent with QoS 1
(the broker keeps them for an agent that is away, in its persistent session), marked ``sent``
on PUBACK, then moved on by the agent's results. Queued commands are (re)sent whenever the hub
(re)connects, so a hub restart loses none.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiomqtt
import structlog

from cloud_hub.ingest import Ingest
from cloud_hub.registry import CommandRow, Registry
from cloud_hub.settings import HubSettings
from cloud_hub.storage import TelemetryStore, open_store
from device_profiles import DeviceProfile
from device_profiles.wire import (
    QOS,
    SESSION_EXPIRY_S,
    Channel,
    CommandRequest,
    CommandResult,
    encode,
    subscription,
    topic,
)
from iot_runtime.mqtt import make_client

__all__ = ["Hub", "UnknownDevice"]

log = structlog.get_logger(__name__)

RECONNECT_MAX_S = 30.0
SWEEP_INTERVAL_S = 5.0
_CONSUMED = (Channel.TELEMETRY, Channel.STATE, Channel.EVENTS, Channel.COMMAND_RESULTS)


class UnknownDevice(LookupError):
    pass


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Hub:
    def __init__(self, settings: HubSettings, store: TelemetryStore | None = None) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_url)
        self.store = store if store is not None else open_store(settings.storage)
        self.ingest = Ingest(self.registry, self.store)
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    async def start(self) -> None:
        await self.registry.start()
        await self.store.start()
        await self.ingest.load_devices()

    async def close(self) -> None:
        await self.store.close()
        await self.registry.close()

    # -- MQTT -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected to the broker and consume agents' messages until cancelled."""
        failures = 0
        async with asyncio.TaskGroup() as group:
            group.create_task(self._sweep_loop(), name="command-sweeper")
            while True:
                client = make_client(
                    self.settings.mqtt,
                    self.settings.client_id,
                    persistent_session=True,
                    session_expiry_s=SESSION_EXPIRY_S,
                )
                try:
                    async with client:
                        failures = 0
                        await self._session(client)
                except aiomqtt.MqttError as exc:
                    self._client = None
                    self.connected.clear()
                    failures += 1
                    delay = min(RECONNECT_MAX_S, 0.5 * 2 ** (failures - 1))
                    (log.warning if failures == 1 else log.debug)(
                        "broker connection lost, reconnecting", error=str(exc), retry_in_s=delay
                    )
                    await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        for channel in _CONSUMED:
            await client.subscribe(subscription(channel), qos=QOS)
        self._client = client
        self.connected.set()
        log.info(
            "hub connected to broker", broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}"
        )
        for row in await self.registry.pending_commands():
            await self._publish_command(row)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            result = await self.ingest.handle(str(message.topic), payload)
            if result is not None:
                await self._apply_result(result)

    # -- commands ---------------------------------------------------------------------------

    async def profile_for(self, device_id: str) -> tuple[str, DeviceProfile]:
        device = await self.registry.get_device(device_id)
        profile = self.ingest.profile_of(device_id)
        if device is None or profile is None:
            raise UnknownDevice(f"no device '{device_id}'")
        return device.agent_id, profile

    async def send_command(
        self, device_id: str, name: str, params: dict[str, Any], ttl_s: float | None = None
    ) -> CommandRow:
        """Validate, persist and send a command. Raises UnknownDevice or CommandRejected."""
        agent_id, profile = await self.profile_for(device_id)
        profile.resolve_command(name, params)  # raises CommandRejected with the reason
        ttl = ttl_s if ttl_s is not None else self.settings.command_ttl_s
        row = self.registry.command_row(
            command_id=uuid.uuid4().hex,
            device_id=device_id,
            agent_id=agent_id,
            name=name,
            params=params,
            status="queued",
            expires_at_ms=_now_ms() + int(ttl * 1000),
        )
        await self.registry.add_command(row)
        log.info("command queued", command_id=row.command_id, device_id=device_id, name=name)
        await self._publish_command(row)
        return await self.registry.get_command(row.command_id) or row

    async def _publish_command(self, row: CommandRow) -> None:
        client = self._client
        if client is None:
            return  # stays queued; sent when the hub (re)connects
        request = CommandRequest(
            command_id=row.command_id,
            device_id=row.device_id,
            name=row.name,
            params=row.params,
            issued_at=int(row.created_at.timestamp() * 1000),
            expires_at=row.expires_at_ms,
        )
        try:
            await client.publish(topic(row.agent_id, Channel.COMMANDS), encode(request), qos=QOS)
        except aiomqtt.MqttError as exc:
            log.warning("command not sent yet", command_id=row.command_id, error=str(exc))
            return
        await self.registry.update_command(row.command_id, "sent", "published to the agent")

    async def _apply_result(self, result: CommandResult) -> None:
        row = await self.registry.update_command(result.command_id, result.status, result.detail)
        if row is None:
            log.warning("result for an unknown command", command_id=result.command_id)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            await self.registry.expire_commands(_now_ms())
