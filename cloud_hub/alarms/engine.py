"""The alarm engine: profile alarm rules evaluated on the hub's telemetry, plus offline alarms.

It reads ``telemetry`` and ``status`` events from the hub's :class:`~cloud_hub.events.bus.EventBus`
and publishes an ``alarm`` event for each transition (raised, acknowledged, cleared).

A rule ``point op value for_s`` holds on a reading when the point's value (or, if the reading
does not carry the point, because the edge only sends what changed, its last known value)
satisfies ``op value``. It must hold without a break, measured in *edge read time*, from the
first reading where it holds: the reading whose time is at least ``for_s`` later raises the
alarm, once; a reading where it does not hold resets the timer and clears the open alarm.
Readings older than the newest one seen for their device are ignored (replays).

Alarms and running timers live in the registry, so a restarted hub neither raises an open
alarm twice nor restarts a duration already running. Last known values are kept in memory
only: after a restart a rule waits for its point to be reported again.

An agent's or device's ``status`` event ``offline`` raises ``agent_offline`` / ``device_offline``
(severity major), ``online`` clears it.

With several hub processes only the leader runs an engine (:mod:`cloud_hub.cluster.leadership`). A
process's bus carries only the readings that process ingested, so there the engine is built
with ``telemetry_from_bus=False`` and the leader's own telemetry subscription
(:mod:`cloud_hub.alarms.feed`) hands it every reading through :meth:`AlarmEngine.feed`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.alarms.models import AlarmOut, AlarmRow
from cloud_hub.alarms.store import AlarmStore, aware
from cloud_hub.events.bus import EventBus, HubEvent, Subscription
from cloud_hub.registry import Registry, utcnow
from device_profiles import AlarmRule, DeviceProfile, Value
from device_profiles.commands import COMPARE

__all__ = ["OFFLINE_SEVERITY", "AlarmEngine", "Clock", "ProfileLookup"]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
ProfileLookup = Callable[[str], DeviceProfile | None]

#: severity of the ``device_offline`` and ``agent_offline`` alarms
OFFLINE_SEVERITY = "major"
_OFFLINE_RULES = frozenset({"device_offline", "agent_offline"})
#: the alarm of an agent announcing another agent's device, and its severity
CLAIM_RULE = "device_claim_refused"
CLAIM_SEVERITY = "critical"
#: the alarm of an agent over its limits (cloud_hub.ingest.agent_limits), and its severity
FLOOD_RULE = "agent_flooding"
FLOOD_SEVERITY = "major"


def _holds(rule: AlarmRule, value: Value) -> bool:
    threshold = rule.value
    if isinstance(threshold, bool) or isinstance(value, bool):
        if not (isinstance(threshold, bool) and isinstance(value, bool)):
            return False
        return COMPARE[rule.op](value, threshold)
    if isinstance(value, str):
        return False
    return COMPARE[rule.op](value, threshold)


def _at(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def _subject(device_id: str | None, agent_id: str) -> str:
    # device ids never start with "@": an agent-wide alarm's key cannot collide with them
    return device_id if device_id is not None else f"@{agent_id}"


@dataclass
class _Track:
    """One rule on one device (or agent): where its condition stands."""

    since_ms: int | None = None  # the condition has held since then (edge time)
    timer_saved: bool = False  # since_ms is persisted as a running timer
    alarm_id: str | None = None  # the open alarm of this rule


class AlarmEngine:
    """Evaluates alarm rules on bus events; raises, clears and acknowledges alarms.

    ``start()`` reloads open alarms and running timers and subscribes to the bus; ``run()``
    consumes events until cancelled; ``close()`` unsubscribes. ``handle()`` processes one
    event (what ``run()`` does for each), for callers that drive the engine themselves.
    """

    def __init__(
        self,
        bus: EventBus,
        registry: Registry,
        profile_of: ProfileLookup,
        clock: Clock = utcnow,
        *,
        max_queue: int = 10_000,
        telemetry_from_bus: bool = True,
    ) -> None:
        self.bus = bus
        #: take telemetry events from the bus (False: only what :meth:`feed` hands over)
        self.telemetry_from_bus = telemetry_from_bus
        self.store = AlarmStore(registry)
        self.stats: Counter[str] = Counter()
        self._profile_of = profile_of
        self._clock = clock
        self._max_queue = max_queue
        self._tracks: dict[tuple[str, str], _Track] = {}
        self._values: dict[str, dict[str, Value]] = {}
        self._newest_ms: dict[str, int] = {}
        self._subscription: Subscription | None = None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Reload open alarms and running timers, then subscribe to the bus.

        A device's readings older than its newest open alarm or running timer are ignored
        afterwards, as before the restart (an agent replaying its buffer cannot clear an alarm
        with readings older than the one that raised it). An open alarm whose rule is no longer
        in its device's profile is cleared.
        """
        self._tracks.clear()
        self._newest_ms.clear()
        self._values.clear()  # a leader taking over again must not trust what it knew before
        orphans: list[str] = []
        for row in await self.store.open_alarms():
            subject = _subject(row.device_id, row.agent_id)
            raised_ms = int(aware(row.raised_at).timestamp() * 1000)
            if row.device_id is not None and row.rule not in _OFFLINE_RULES:
                profile = self._profile_of(row.device_id)
                if profile is not None and row.rule not in profile.alarms:
                    orphans.append(row.alarm_id)
                    continue
                self._seen(row.device_id, raised_ms)
            track = self._track(subject, row.rule)
            track.alarm_id, track.since_ms = row.alarm_id, raised_ms
        for timer in await self.store.timers():
            track = self._track(timer.device_id, timer.rule)
            if track.alarm_id is None:
                track.since_ms, track.timer_saved = timer.since_ms, True
                self._seen(timer.device_id, timer.since_ms)
        now = self._clock()
        for alarm_id in orphans:  # the profile lost the rule: nothing can clear it any more
            cleared = await self.store.clear(alarm_id, now)
            if cleared is not None:
                log.info("alarm cleared: its rule left the profile", alarm_id=alarm_id)
                self._publish("cleared", cleared, int(now.timestamp() * 1000))
        log.info(
            "alarm engine started",
            open_alarms=sum(t.alarm_id is not None for t in self._tracks.values()),
            running_timers=sum(t.timer_saved for t in self._tracks.values()),
        )
        if self._subscription is None:
            kinds = ("telemetry", "status") if self.telemetry_from_bus else ("status",)
            self._subscription = self.bus.subscribe(
                lambda event: event.kind in kinds, self._max_queue
            )

    def feed(self, event: HubEvent) -> None:
        """Queue an event for :meth:`run` that does not come from the bus (the leader's own
        telemetry subscription). Ignored while the engine is not started; when the queue is
        full the oldest event is dropped and counted, as for bus events."""
        if self._subscription is not None:
            self._subscription.put(event)

    async def reconcile_offline(self) -> None:
        """Raise or clear offline alarms to match the agent and device states in the registry.

        For a leader taking over from another process: the status events that every process
        consumed while no engine ran (the failover gap) reached only the registry, which ingest
        updates in every process. An offline agent or device without an open alarm gets one
        (raised at the state's recorded change, or now); an open one whose subject is online
        again is cleared now.
        """
        agents, devices = await self.store.states()
        now_ms = int(self._clock().timestamp() * 1000)
        for agent in agents:
            if agent.state in ("online", "offline"):
                changed = agent.state_changed_at
                ts_ms = int(aware(changed).timestamp() * 1000) if changed else now_ms
                data = {"scope": "agent", "state": agent.state}
                await self._status(HubEvent("status", ts_ms, data, agent_id=agent.agent_id))
        for device in devices:
            if device.status in ("online", "offline"):
                data = {"scope": "device", "state": device.status}
                event = HubEvent("status", now_ms, data, device.device_id, device.agent_id)
                await self._status(event)

    def _seen(self, device_id: str, ts_ms: int) -> None:
        self._newest_ms[device_id] = max(ts_ms, self._newest_ms.get(device_id, ts_ms))

    def close(self) -> None:
        if self._subscription is not None:
            self.bus.unsubscribe(self._subscription)
            self.stats["dropped_events"] += self._subscription.dropped
            self._subscription = None

    async def run(self) -> None:
        """Process bus events until cancelled. A failing database write is logged and
        counted; the engine goes on with the next event."""
        if self._subscription is None:
            await self.start()
        assert self._subscription is not None
        async for event in self._subscription:
            try:
                await self.handle(event)
            except SQLAlchemyError as exc:
                self.stats["errors"] += 1
                log.error("alarm evaluation failed", kind=event.kind, error=str(exc))
            except Exception:  # one bad event must not stop alarms (nor the hub's task group)
                self.stats["errors"] += 1
                log.exception("alarm evaluation failed", kind=event.kind, device_id=event.device_id)

    # -- events -----------------------------------------------------------------------------

    async def handle(self, event: HubEvent) -> None:
        """Process one telemetry or status event (other kinds are ignored)."""
        if event.kind == "telemetry":
            await self._telemetry(event)
        elif event.kind == "status":
            await self._status(event)

    async def _telemetry(self, event: HubEvent) -> None:
        device_id = event.device_id
        values = event.data.get("values")
        if device_id is None or event.agent_id is None or not isinstance(values, dict):
            self.stats["malformed_events"] += 1
            log.warning("telemetry event without device, agent or values", data=event.data)
            return
        profile = self._profile_of(device_id)
        if profile is None or not profile.alarms:
            return
        if event.ts_ms < self._newest_ms.get(device_id, event.ts_ms):
            self.stats["stale_readings"] += 1
            return
        self._newest_ms[device_id] = event.ts_ms
        known = self._values.setdefault(device_id, {})
        known.update(values)
        for name, rule in profile.alarms.items():
            if rule.point in known:
                await self._evaluate(
                    device_id, event.agent_id, name, rule, known[rule.point], event.ts_ms
                )

    async def _evaluate(
        self, device_id: str, agent_id: str, name: str, rule: AlarmRule, value: Value, ts_ms: int
    ) -> None:
        track = self._track(device_id, name)
        if not _holds(rule, value):
            await self._reset(device_id, name, track)
            if track.alarm_id is not None:
                await self._clear(track, ts_ms)
            return
        if track.since_ms is None:
            track.since_ms = ts_ms
        if track.alarm_id is not None:
            return
        if ts_ms - track.since_ms >= rule.for_s * 1000:
            message = (
                f"{rule.description or name}: {rule.point} = {value!r} ({rule.op} {rule.value!r}"
            )
            message += f" for {rule.for_s:g} s)" if rule.for_s else ")"
            await self._raise(device_id, agent_id, name, rule.severity, value, message, ts_ms)
            track.timer_saved = False  # the store dropped it with the insert
        elif not track.timer_saved:
            await self.store.set_timer(device_id, name, track.since_ms)
            track.timer_saved = True

    async def _reset(self, subject: str, name: str, track: _Track) -> None:
        if track.timer_saved:
            await self.store.drop_timer(subject, name)
            track.timer_saved = False
        track.since_ms = None

    async def _status(self, event: HubEvent) -> None:
        scope, state = event.data.get("scope"), event.data.get("state")
        agent_id = event.agent_id
        device_id = event.device_id if scope == "device" else None
        if state == "claim_refused" and agent_id is not None and device_id is not None:
            await self._claim_refused(device_id, agent_id, str(event.data.get("owner")), event)
            return
        if state == "flooding" and agent_id is not None and scope == "agent":
            await self._flooding(agent_id, event)
            return
        if (
            agent_id is None
            or scope not in ("agent", "device")
            or (scope == "device" and event.device_id is None)
            or state not in ("online", "offline")
        ):
            self.stats["malformed_events"] += 1
            log.warning("status event without agent, scope or state", data=event.data)
            return
        rule = f"{scope}_offline"
        track = self._track(_subject(device_id, agent_id), rule)
        if state == "online":
            track.since_ms = None
            if track.alarm_id is not None:
                await self._clear(track, event.ts_ms)
        elif track.alarm_id is None:
            track.since_ms = event.ts_ms
            what = f"device {device_id}" if device_id is not None else f"agent {agent_id}"
            await self._raise(
                device_id, agent_id, rule, OFFLINE_SEVERITY, None, f"{what} is offline", event.ts_ms
            )

    async def _claim_refused(
        self, device_id: str, agent_id: str, owner: str, event: HubEvent
    ) -> None:
        """An agent announced a device of another agent: one alarm per device and claimant
        (an operator acknowledges it; it does not clear by itself)."""
        track = self._track(_subject(device_id, agent_id), CLAIM_RULE)
        if track.alarm_id is None:
            message = (
                f"agent {agent_id} announced device {device_id}, which belongs to agent "
                f"{owner}: refused (a misconfigured or hostile agent)"
            )
            await self._raise(
                device_id, agent_id, CLAIM_RULE, CLAIM_SEVERITY, None, message, event.ts_ms
            )

    async def _flooding(self, agent_id: str, event: HubEvent) -> None:
        """An agent went over its limits: one alarm per agent (an operator acknowledges it; it
        does not clear by itself)."""
        track = self._track(_subject(None, agent_id), FLOOD_RULE)
        if track.alarm_id is None:
            reasons = event.data.get("by_reason") or {}
            detail = ", ".join(f"{k} {v}" for k, v in sorted(dict(reasons).items()))
            message = (
                f"agent {agent_id} is over its limits ({event.data.get('rate_msgs_s')} msg/s): "
                f"{event.data.get('shed')} messages shed ({detail}); a misbehaving or hostile "
                "agent"
            )
            await self._raise(
                None, agent_id, FLOOD_RULE, FLOOD_SEVERITY, None, message, event.ts_ms
            )

    # -- transitions ------------------------------------------------------------------------

    def _track(self, subject: str, rule: str) -> _Track:
        return self._tracks.setdefault((subject, rule), _Track())

    async def _raise(
        self,
        device_id: str | None,
        agent_id: str,
        rule: str,
        severity: str,
        value: Value | None,
        message: str,
        ts_ms: int,
    ) -> None:
        row = AlarmRow(
            alarm_id=uuid.uuid4().hex,
            device_id=device_id,
            agent_id=agent_id,
            rule=rule,
            severity=severity,
            state="active",
            raised_at=_at(ts_ms),
            value=value,
            message=message,
        )
        await self.store.add(row)
        self._track(_subject(device_id, agent_id), rule).alarm_id = row.alarm_id
        self.stats["raised"] += 1
        log.info(
            "alarm raised",
            alarm_id=row.alarm_id,
            device_id=device_id,
            agent_id=agent_id,
            rule=rule,
            severity=severity,
        )
        self._publish("raised", row, ts_ms)

    async def _clear(self, track: _Track, ts_ms: int) -> None:
        assert track.alarm_id is not None
        alarm_id, track.alarm_id = track.alarm_id, None
        row = await self.store.clear(alarm_id, _at(ts_ms))
        if row is None:
            return  # cleared elsewhere already
        self.stats["cleared"] += 1
        log.info("alarm cleared", alarm_id=alarm_id, device_id=row.device_id, rule=row.rule)
        self._publish("cleared", row, ts_ms)

    async def acknowledge(self, alarm_id: str, by: str, note: str) -> AlarmRow:
        """An operator has seen the alarm. Raises AlarmNotFound or AlarmAlreadyAcknowledged."""
        now = self._clock()
        row = await self.store.acknowledge(alarm_id, by, note, now)
        log.info("alarm acknowledged", alarm_id=alarm_id, by=by)
        self._publish("acknowledged", row, int(now.timestamp() * 1000))
        return row

    def _publish(self, transition: str, row: AlarmRow, ts_ms: int) -> None:
        data = AlarmOut.model_validate(row).model_dump(mode="json")
        data["transition"] = transition
        self.bus.publish(
            HubEvent(
                kind="alarm", ts_ms=ts_ms, data=data, device_id=row.device_id, agent_id=row.agent_id
            )
        )
