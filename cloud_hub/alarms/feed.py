"""The leader's own view of all telemetry, for the alarm engine only.

With a shared subscription group the broker hands each telemetry message to one hub process,
so no process's bus carries all of a device's readings, and a duration rule (PM2.5 > 75 for
600 s) evaluated on a share would raise late, never, or clear on a gap. The leader therefore
opens one more MQTT session, **not** shared, with its own client id ``{client_id}-alarms``:
it receives every telemetry message, validates it as ingest does
(:meth:`~cloud_hub.ingest.messages.Ingest.check_telemetry`) and hands the readings to the alarm engine
(:meth:`~cloud_hub.alarms.AlarmEngine.feed`). It stores nothing, writes no last-seen and
dead-letters nothing: the process that ingests the message does all that.

Trade-offs, chosen because alarms are evaluated on *edge* read times, not arrival times:

- **Clean session, QoS 0.** The subscription costs the broker no stored session and the hub
  no acknowledgements. A reading lost on the way (broker overload, a reconnect, the failover
  gap before a new leader subscribes) only delays a transition to the next reading of that
  point: the engine keeps its timers in the registry and a duration is measured between edge
  times, so it is not stretched by a missing reading, only decided one reading later.
- **Independent of storage.** The feed sees readings whether or not the telemetry store
  accepted them, so alarms keep working while InfluxDB is down (the single-process path
  evaluates stored readings only).
- The broker delivers each telemetry message twice in total (group + feed).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiomqtt
import structlog

from cloud_hub.alarms import AlarmEngine
from cloud_hub.ingest.messages import Ingest, telemetry_event
from device_profiles.wire import Channel, WireError, subscription
from iot_runtime.mqtt import MqttSettings, make_client

__all__ = ["AlarmFeed"]

log = structlog.get_logger(__name__)

RECONNECT_MAX_S = 30.0


class AlarmFeed:
    """Feeds every telemetry reading on the broker to ``engine`` while ``run()`` runs."""

    def __init__(
        self, mqtt: MqttSettings, client_id: str, ingest: Ingest, engine: AlarmEngine
    ) -> None:
        self.client_id = client_id
        self.connected = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self._mqtt = mqtt
        self._ingest = ingest
        self._engine = engine

    async def run(self) -> None:
        """Stay subscribed (reconnecting with capped backoff) until cancelled."""
        failures = 0
        try:
            while True:
                client = make_client(self._mqtt, self.client_id, persistent_session=False)
                try:
                    async with client:
                        failures = 0
                        await self._consume(client)
                except aiomqtt.MqttError as exc:
                    failures += 1
                    delay = min(RECONNECT_MAX_S, 0.5 * 2 ** (failures - 1))
                    (log.warning if failures == 1 else log.debug)(
                        "alarm feed lost the broker, reconnecting",
                        error=str(exc),
                        retry_in_s=delay,
                    )
                    await asyncio.sleep(delay)
                finally:
                    self.connected.clear()
        finally:
            self.connected.clear()

    async def _consume(self, client: aiomqtt.Client) -> None:
        await client.subscribe(subscription(Channel.TELEMETRY), qos=0)
        # births too, so that a new device's first readings are not refused as unknown
        await client.subscribe(subscription(Channel.STATE), qos=0)
        self.connected.set()
        log.info("alarm feed subscribed", client_id=self.client_id)
        state = subscription(Channel.STATE)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.matches(state):
                self._ingest.learn_devices(str(message.topic), payload)
                continue
            self.handle(str(message.topic), payload)

    def handle(self, topic: str, payload: bytes) -> None:
        """Validate one telemetry message and queue its readings for the engine."""
        self.stats["messages"] += 1
        try:
            readings, refused = self._ingest.check_telemetry(topic, payload)
        except WireError:
            self.stats["refused_messages"] += 1  # the ingesting process dead-letters it
            return
        self.stats["refused_readings"] += len(refused)
        for reading in readings:
            self._engine.feed(telemetry_event(reading))
        self.stats["readings"] += len(readings)
