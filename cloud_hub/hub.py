"""The hub process's core: two MQTT sessions, ingest, telemetry writing, command dispatch.

- The **telemetry session** consumes ``iot/v1/+/telemetry`` (optionally as an MQTT 5 shared
  subscription, so several hub processes split the load) with manual acknowledgements: a
  message is acknowledged only once its readings are stored (see :mod:`cloud_hub.ingest.writer`).
- The **control session** consumes agent state, device events and command results, and
  publishes commands. It is separate so that commands keep flowing while the telemetry store
  is down and telemetry is held back.

Commands are persisted as ``queued`` before anything is sent, published to the agent with QoS 1
(the broker keeps them for an agent that is away, in its persistent session), marked ``sent``
on PUBACK, then moved on by the agent's results. Queued commands are (re)sent whenever the hub
(re)connects, so a hub restart loses none.

Several hub processes (one ``shared_subscription_group``, one registry) are one hub: every
process ingests, serves the API and appends its status, alarm and command events to the
durable event log (:mod:`cloud_hub.events.log`); the one holding the leader lease runs the
alarm engine (with its own telemetry feed, :mod:`cloud_hub.alarms.feed`), the webhook relay,
the command expiry sweep and the lighting scheduler (:mod:`cloud_hub.cluster.leadership`,
:mod:`cloud_hub.lighting`). A process without a group always
leads.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from cloud_hub.alarms import AlarmEngine
from cloud_hub.alarms.feed import AlarmFeed
from cloud_hub.cluster.leadership import Duty, Leadership
from cloud_hub.cluster.lease import LeaderLease, Lease, SoleLease, holder_id
from cloud_hub.coap.presence import Presence
from cloud_hub.dead_letters.store import DeadLetterStore
from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.events.log import EventLog
from cloud_hub.events.relay import WebhookRelay
from cloud_hub.events.webhooks import WebhookDispatcher
from cloud_hub.ingest.agent_limits import AgentLimiter
from cloud_hub.ingest.messages import Accepted, Ingest, batch_of
from cloud_hub.ingest.spool import TelemetrySpool
from cloud_hub.ingest.stored_acks import StoredAcks
from cloud_hub.ingest.writer import Pending, TelemetryWriter
from cloud_hub.lighting import Lighting
from cloud_hub.provisioning import ProvisioningService
from cloud_hub.provisioning.models import AgentCredentialRow
from cloud_hub.registry import AgentConfigRow, CommandGroupRow, CommandRow, Registry, utcnow
from cloud_hub.settings import HubSettings
from cloud_hub.storage import StorageError, TelemetryStore, open_store
from device_profiles import CommandRejected, DeviceProfile
from device_profiles.wire import (
    QOS,
    SESSION_EXPIRY_S,
    Channel,
    CommandRequest,
    CommandResult,
    DesiredConfig,
    encode,
    shared,
    subscription,
    topic,
)
from iot_runtime.mqtt import InboundStats, ack, make_client
from iot_runtime.mqtt_inbound import agent_of_topic

__all__ = ["Hub", "UnknownDevice"]

log = structlog.get_logger(__name__)

RECONNECT_MAX_S = 30.0
SWEEP_INTERVAL_S = 5.0
LAST_SEEN_FLUSH_S = 5.0
_CONTROL = (
    Channel.STATE,
    Channel.EVENTS,
    Channel.COMMAND_RESULTS,
    Channel.HEALTH,
    Channel.CONFIG_REPORTED,
)


class UnknownDevice(LookupError):
    pass


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Hub:
    def __init__(self, settings: HubSettings, store: TelemetryStore | None = None) -> None:
        self.settings = settings
        self.registry = Registry(settings.registry_url, auto_migrate=settings.auto_migrate)
        self.store = store if store is not None else open_store(settings.storage)
        self.events = EventBus()
        self.dead_letters = DeadLetterStore(self.registry, settings.dead_letters)
        self.ingest = Ingest(
            self.registry,
            self.events,
            self.dead_letters,
            min_ts_ms=int(settings.ingest.min_ts.timestamp() * 1000),
            max_ahead_ms=int(settings.ingest.max_ahead_s * 1000),
        )
        group = settings.shared_subscription_group
        # in a group this process's bus has a share of the readings: the leader's feed has all
        self.alarms = AlarmEngine(
            self.events, self.registry, self.ingest.profile_of, telemetry_from_bus=group is None
        )
        self.alarm_feed = (
            AlarmFeed(settings.mqtt, f"{settings.client_id}-alarms", self.ingest, self.alarms)
            if group
            else None
        )
        # telemetry from the bus (best effort); status, alarm and command events from the log
        self.webhooks = WebhookDispatcher(
            self.events, self.registry, settings.webhooks, bus_kinds=("telemetry",)
        )
        self.event_log = EventLog(self.registry, self.events, settings.event_log)
        self.relay = WebhookRelay(self.webhooks, self.event_log, self.registry)
        lease: Lease = (
            LeaderLease(self.registry, holder_id(settings.client_id), settings.leader_lease_s)
            if group
            else SoleLease()
        )
        # lighting strategies: the API's checks and actions; the scheduler is a leader duty
        self.lighting = Lighting(self.registry, self, self.ingest.profile_of, settings.lighting)
        self.leadership = Leadership(
            lease, self._leader_duties(), prepare=self._lead, finish=self.alarms.close
        )
        spool = settings.spool
        self.writer = TelemetryWriter(
            self.store,
            on_stored=self.ingest.stored,
            on_rejected=self.ingest.rejected,
            spool=TelemetrySpool(
                spool.path or Path(f"var/spool-{settings.client_id}.db"), spool.max_bytes
            )
            if spool.enabled
            else None,
            spool_after_s=spool.after_s,
        )
        self.presence = Presence(
            self.registry,
            self.events,
            settings.presence_missed_reports,
            sweeping=lambda: self.leadership.is_leader,
        )
        self.provisioning = ProvisioningService.from_settings(
            self.registry, settings.provisioning, settings.mqtt
        )
        #: telemetry batches stored, to acknowledge to their agents
        self.stored_acks = StoredAcks()
        #: the store answered at start-up (else run() keeps trying: store_start_retry)
        self.store_started = False
        self.connected = asyncio.Event()
        self.telemetry_connected = asyncio.Event()
        #: back-pressure and overflow counters of the telemetry session, across reconnects
        self.telemetry_inbound = InboundStats()
        #: what one agent may send (cloud_hub.ingest.agent_limits), on both sessions
        self.limits = AgentLimiter(settings.agent_limits, self.events, self._revoke_flooder)
        self._control: aiomqtt.Client | None = None

    async def start(self) -> None:
        await self.registry.start()
        try:
            await self.store.start()
            self.store_started = True
        except StorageError as exc:
            # the disk spool is for exactly this: take telemetry, keep it, drain it later
            log.warning(
                "telemetry store unavailable at start-up: spooling readings, retrying",
                error=str(exc),
            )
        await self.writer.open()
        await self.ingest.load_devices()
        await self.event_log.start()
        # if this process leads: the alarm engine's start(), which reloads open alarms and
        # timers (it needs the profiles)
        await self.leadership.start()
        await self.webhooks.start()

    async def close(self) -> None:
        await self.leadership.close()  # the duties stop, the lease goes to another process
        await self.webhooks.close()
        await self.event_log.close()  # appends what is queued: before the registry closes
        await self.ingest.flush_last_seen()
        await self.presence.flush()
        await self.writer.close()
        await self.store.close()
        await self.dead_letters.close()  # writes what is queued: before the registry closes
        await self.registry.close()

    # -- leadership -------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this process runs the leader duties now (always, without a group)."""
        return self.leadership.is_leader

    async def _lead(self) -> None:
        """Ready the alarm engine of a process that has just become the leader."""
        await self.alarms.start()  # reloads open alarms and timers; needs the profiles
        if self.settings.shared_subscription_group:
            # status events consumed while no process led are in the registry only
            await self.alarms.reconcile_offline()

    def _leader_duties(self) -> list[Duty]:
        """What only one hub process does (see :mod:`cloud_hub.cluster.leadership`)."""
        duties: list[Duty] = [
            ("alarms", self.alarms.run),
            ("webhook-relay", self.relay.run),
            ("command-sweeper", lambda: self._periodic(SWEEP_INTERVAL_S, self._sweep)),
        ]
        if self.alarm_feed is not None:
            duties.append(("alarm-feed", self.alarm_feed.run))
        if self.settings.lighting.enabled:
            duties.append(("lighting-scheduler", self.lighting.scheduler.run))
        return duties

    # -- MQTT -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected to the broker and consume agents' messages until cancelled."""
        async with asyncio.TaskGroup() as group:
            if not self.store_started:
                group.create_task(self._start_store(), name="store-start")
            group.create_task(
                self._periodic(LAST_SEEN_FLUSH_S, self.ingest.flush_last_seen), name="last-seen"
            )
            group.create_task(self.writer.run(), name="telemetry-writer")
            group.create_task(self.presence.run(), name="presence")
            group.create_task(self.dead_letters.run(), name="dead-letters")
            group.create_task(self.event_log.run(), name="event-log")
            group.create_task(self.leadership.run(), name="leadership")
            group.create_task(self.webhooks.run(), name="webhooks")
            group.create_task(self.limits.run(), name="agent-limits")
            group.create_task(
                self._stay_connected("control", self._control_session), name="mqtt-control"
            )
            group.create_task(
                self._stay_connected("telemetry", self._telemetry_session), name="mqtt-telemetry"
            )

    @property
    def store_ready(self) -> bool:
        """Whether the telemetry store takes writes (as far as the hub knows now)."""
        return self.store_started and not self.writer.store_unavailable

    async def _start_store(self) -> None:
        """Start the store that was down at start-up, retrying with a capped backoff."""
        failures = 0
        while not self.store_started:
            failures += 1
            await asyncio.sleep(min(RECONNECT_MAX_S, 0.5 * 2 ** (failures - 1)))
            try:
                await self.store.start()
            except StorageError as exc:
                log.debug("telemetry store still unavailable", error=str(exc))
                continue
            self.store_started = True
            log.info("telemetry store available", attempts=failures)

    async def _stay_connected(
        self, role: str, session: Callable[[aiomqtt.Client], Awaitable[None]]
    ) -> None:
        failures = 0
        while True:
            client = make_client(
                self.settings.mqtt,
                f"{self.settings.client_id}-{role}",
                persistent_session=True,
                session_expiry_s=SESSION_EXPIRY_S,
                manual_ack=role == "telemetry",
                # back-pressure (iot_runtime.mqtt_inbound): the broker holds what ingest has
                # not taken yet
                inbound=self.settings.telemetry_inbound if role == "telemetry" else None,
                inbound_stats=self.telemetry_inbound if role == "telemetry" else None,
                # one agent's flood is shed before it is queued, and one agent's backlog
                # waits its turn behind the others' messages (cloud_hub.ingest.agent_limits)
                admit=self.limits.admit,
                fair_key=agent_of_topic,
            )
            try:
                async with client:
                    failures = 0
                    await session(client)
            except aiomqtt.MqttError as exc:
                failures += 1
                delay = min(RECONNECT_MAX_S, 0.5 * 2 ** (failures - 1))
                (log.warning if failures == 1 else log.debug)(
                    "broker connection lost, reconnecting",
                    session=role,
                    error=str(exc),
                    retry_in_s=delay,
                )
            finally:
                if role == "control":
                    self._control = None
                    self.connected.clear()
                else:
                    self.telemetry_connected.clear()
            await asyncio.sleep(
                min(RECONNECT_MAX_S, 0.5 * 2 ** max(0, failures - 1)) if failures else 0
            )

    async def _revoke_flooder(self, agent_id: str) -> None:
        """The agent limits' policy: revoke a flooding agent's broker credentials."""
        await self.revoke_agent("policy:agent_limits", agent_id)

    async def revoke_agent(self, actor: str, agent_id: str) -> AgentCredentialRow:
        """Disable an agent's broker credentials and disconnect it (idempotent, audited as
        ``actor``), and record it offline: the broker sends no Last Will for a client it
        drops, so without this the agent would stay "online"."""
        cred = await self.provisioning.revoke_agent(actor, agent_id)
        agent = await self.registry.get_agent(agent_id)
        if agent is not None and agent.state != "offline":
            await self.ingest.cut_off(agent_id, "revoked")
        return cred

    async def _control_session(self, client: aiomqtt.Client) -> None:
        for channel in _CONTROL:
            await client.subscribe(subscription(channel), qos=QOS)
        self._control = client
        self.connected.set()
        log.info(
            "hub connected to broker", broker=f"{self.settings.mqtt.host}:{self.settings.mqtt.port}"
        )
        for row in await self.registry.pending_commands():
            await self._publish_command(row)
        for config in await self.registry.unconfirmed_configs():
            await self._publish_config(config)
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                accepted = await self.ingest.handle(str(message.topic), payload)
                if accepted.command_result is not None:
                    await self._apply_result(accepted.command_result)
            except Exception as exc:  # one message must never stop the loop
                log.exception("control message failed", topic=str(message.topic))
                self.ingest.dead_letter(str(message.topic), f"hub error: {exc!r}", payload)

    async def _telemetry_session(self, client: aiomqtt.Client) -> None:
        topic_filter = subscription(Channel.TELEMETRY)
        if self.settings.shared_subscription_group:
            topic_filter = shared(self.settings.shared_subscription_group, topic_filter)
        await client.subscribe(topic_filter, qos=QOS)
        # birth messages too, so a device's first readings never race its registration
        await client.subscribe(subscription(Channel.STATE), qos=QOS)
        self.telemetry_connected.set()
        # consume and acknowledge side by side; either failing (a lost link) ends the session
        tasks = {
            asyncio.create_task(self._consume_telemetry(client), name="telemetry-consume"),
            asyncio.create_task(self.stored_acks.run(client), name="stored-acks"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pending = set(tasks)
            while pending:  # cancelled again if a cancellation was swallowed (3.11 wait_for)
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in done:
            task.result()  # re-raises the MqttError that ended the session

    def _taken(self, client: aiomqtt.Client, message: aiomqtt.Message, accepted: Accepted) -> None:
        """A telemetry message is stored (or dead-lettered): PUBACK it to the broker, and
        tell its agent that it may forget the batch."""
        ack(client, message)
        if accepted.batch is not None:
            self.stored_acks.add(*accepted.batch)

    async def _consume_telemetry(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            if message.topic.matches(subscription(Channel.STATE)):
                self.ingest.learn_devices(str(message.topic), payload)
                ack(client, message)
                continue
            try:
                accepted = await self.ingest.handle(str(message.topic), payload)
            except Exception as exc:  # a poison message is dead-lettered, never retried forever
                log.exception("telemetry message failed", topic=str(message.topic))
                self.ingest.dead_letter(str(message.topic), f"hub error: {exc!r}", payload)
                self._taken(client, message, Accepted(batch=batch_of(str(message.topic), payload)))
                continue
            await self.writer.submit(
                Pending(
                    accepted.readings,
                    lambda m=message, a=accepted: self._taken(client, m, a),  # type: ignore[misc]
                )
            )

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
        self._command_event(row)
        await self._publish_command(row)
        return await self.registry.get_command(row.command_id) or row

    async def send_group_command(
        self,
        selector: dict[str, Any],
        name: str,
        params: dict[str, Any],
        ttl_s: float | None = None,
        created_by: str = "",
    ) -> CommandGroupRow:
        """Send a command to every device ``selector`` picks (``device_ids``, ``site``,
        ``profile``, ``tags``); devices whose profile refuses it are listed as rejected."""
        devices = await self.registry.select_devices(**selector)
        ttl = ttl_s if ttl_s is not None else self.settings.command_ttl_s
        group_id = uuid.uuid4().hex
        rows: list[CommandRow] = []
        rejected: dict[str, str] = {}
        for device in devices:
            profile = self.ingest.profile_of(device.device_id)
            if profile is None:
                rejected[device.device_id] = f"unknown profile '{device.profile}'"
                continue
            try:
                profile.resolve_command(name, params)
            except CommandRejected as exc:
                rejected[device.device_id] = exc.reason
                continue
            rows.append(
                self.registry.command_row(
                    command_id=uuid.uuid4().hex,
                    device_id=device.device_id,
                    agent_id=device.agent_id,
                    name=name,
                    params=params,
                    status="queued",
                    expires_at_ms=_now_ms() + int(ttl * 1000),
                    group_id=group_id,
                )
            )
        if not rows:
            reasons = "; ".join(f"{d}: {r}" for d, r in sorted(rejected.items())[:5])
            raise CommandRejected(
                f"no selected device accepts '{name}'" + (f" ({reasons})" if reasons else "")
            )
        group = CommandGroupRow(
            group_id=group_id,
            name=name,
            params=params,
            selector=selector,
            rejected=rejected,
            created_by=created_by,
            created_at=utcnow(),
        )
        await self.registry.add_group(group, rows)
        log.info(
            "group command queued", group_id=group_id, devices=len(rows), rejected=len(rejected)
        )
        for row in rows:
            self._command_event(row)
            await self._publish_command(row)
        return group

    async def cancel_command(self, command_id: str) -> tuple[CommandRow | None, bool]:
        """Cancel a command without a final status. One already handed to the broker may
        still reach its agent; its late result is then ignored (the status stays cancelled)."""
        row, cancelled = await self.registry.cancel_command(command_id, "cancelled by an operator")
        if row is not None and cancelled:
            self._command_event(row)
        return row, cancelled

    async def cancel_group(self, group_id: str) -> list[CommandRow]:
        """Cancel every unfinished command of a group at once (as :meth:`cancel_command`)."""
        rows = await self.registry.cancel_group(group_id, "cancelled by an operator")
        for row in rows:
            self._command_event(row)
        return rows

    # -- remote configuration ---------------------------------------------------------------

    async def push_config(self, agent_id: str, config: dict[str, Any]) -> AgentConfigRow:
        """Store the next desired configuration of an agent and publish it (retained)."""
        if await self.registry.get_agent(agent_id) is None:
            raise UnknownDevice(f"no agent '{agent_id}'")
        row = await self.registry.set_desired_config(agent_id, config)
        await self._publish_config(row)
        return row

    async def _publish_config(self, row: AgentConfigRow) -> None:
        client = self._control
        if client is None:
            return  # published when the hub (re)connects
        desired = DesiredConfig(
            agent_id=row.agent_id, version=row.version, config=row.desired, issued_at=_now_ms()
        )
        try:
            await client.publish(
                topic(row.agent_id, Channel.CONFIG_DESIRED), encode(desired), qos=QOS, retain=True
            )
        except aiomqtt.MqttError as exc:
            log.warning("configuration not published yet", agent_id=row.agent_id, error=str(exc))

    async def _publish_command(self, row: CommandRow) -> None:
        client = self._control
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
        updated = await self.registry.update_command(
            row.command_id, "sent", "published to the agent"
        )
        if updated is not None:
            self._command_event(updated)

    async def _apply_result(self, result: CommandResult) -> None:
        row = await self.registry.update_command(result.command_id, result.status, result.detail)
        if row is None:
            log.warning("result for an unknown command", command_id=result.command_id)
            return
        self._command_event(row)

    def _command_event(self, row: CommandRow) -> None:
        self.events.publish(
            HubEvent(
                kind="command",
                ts_ms=_now_ms(),
                device_id=row.device_id,
                agent_id=row.agent_id,
                data={
                    "command_id": row.command_id,
                    "name": row.name,
                    "status": row.status,
                    "detail": row.detail,
                },
            )
        )

    async def _sweep(self) -> None:
        for row in await self.registry.expire_commands(_now_ms()):
            self._command_event(row)

    @staticmethod
    async def _periodic(interval_s: float, action: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await action()
            except Exception:  # a periodic chore must not take the hub down
                log.exception("periodic task failed", task=getattr(action, "__name__", "?"))
