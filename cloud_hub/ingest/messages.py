"""Turns contract messages from agents into registry updates and stored telemetry.

Every message is validated against the contract and every reading against its device's
profile. What does not fit is counted and dead-lettered with the reason (kept in the registry
by :class:`~cloud_hub.dead_letters.store.DeadLetterStore`); it never stops the loop nor costs the
valid readings beside it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from cloud_hub.dead_letters.store import DeadLetterStore
from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.provisioning.models import AgentCredentialRow, AuditRow
from cloud_hub.registry import COLLECTION_WINDOW_MS, Registry, utcnow
from cloud_hub.storage import StoredReading
from device_profiles import DeviceProfile, Point, ProfileError, Value, resolve_profile
from device_profiles.wire import (
    AgentHealth,
    AgentState,
    Channel,
    CommandResult,
    DeviceEvent,
    Reading,
    ReportedConfig,
    WireError,
    decode,
    decode_telemetry,
    parse_topic,
)

__all__ = ["Accepted", "Ingest", "Refusals", "batch_of", "check_reading", "telemetry_event"]

log = structlog.get_logger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Accepted:
    """What a message yields: readings to store, or a command result to apply."""

    readings: list[StoredReading] = field(default_factory=list)
    command_result: CommandResult | None = None
    #: a telemetry message's (agent id, seq), to acknowledge once stored; None if unknown
    batch: tuple[str, int] | None = None


NOTHING = Accepted()


@dataclass(eq=False)
class Refusals:
    """What ingest refused of the messages handed to it within :meth:`Ingest.refusals`."""

    #: the reasons of the dead letters made, in order
    reasons: list[str] = field(default_factory=list)
    #: readings the store refused for good, of those passed to :meth:`Ingest.watch_store`
    store_refused: int = 0
    #: refusals are only collected here, not dead-lettered (a replay keeps its dead letter)
    record_only: bool = False


_REFUSALS: ContextVar[Refusals | None] = ContextVar("ingest_refusals", default=None)


@dataclass
class _DeviceMeta:
    agent_id: str
    profile: DeviceProfile
    #: point name -> the Python type its values are stored as (the hot path's lookup)
    kinds: dict[str, type] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kinds = {name: _kind(point) for name, point in self.profile.points.items()}


def _kind(point: Point) -> type:
    if point.type == "bool":
        return bool
    if point.type == "string":
        return str
    return int if point.is_integral else float


def check_reading(
    profile: DeviceProfile, reading: Reading, kinds: dict[str, type] | None = None
) -> dict[str, Value]:
    """The reading's values typed as the profile says, or ValueError naming the bad point.

    Integers are accepted for float points (stored as floats: a field keeps one type in
    InfluxDB) and whole floats for integer points; nothing else is converted.
    """
    kinds = kinds if kinds is not None else _DeviceMeta("", profile).kinds
    out: dict[str, Value] = {}
    for name, value in reading.values.items():
        kind = kinds.get(name)
        if kind is None:
            raise ValueError(f"point '{name}' is not in profile '{profile.name}'")
        given = type(value)
        if given is kind:
            out[name] = value
        elif kind is float and given is int:
            out[name] = float(value)
        elif kind is int and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
        else:
            raise ValueError(
                f"point '{name}' expects a {profile.points[name].type} value, got {value!r}"
            )
    return out


def telemetry_event(reading: StoredReading) -> HubEvent:
    """The ``telemetry`` event of a stored (or, for the alarm feed, validated) reading."""
    return HubEvent(
        kind="telemetry",
        ts_ms=reading.ts_ms,
        device_id=reading.device_id,
        agent_id=reading.agent_id,
        data={"profile": reading.profile, "values": reading.values},
    )


@dataclass
class Ingest:
    registry: Registry
    events: EventBus
    #: where refused messages and readings are kept
    dead_letters: DeadLetterStore
    #: read times taken: not before ``min_ts_ms``, not more than ``max_ahead_ms`` ahead
    min_ts_ms: int = 946_684_800_000  # 2000-01-01
    max_ahead_ms: int = 3_600_000
    stats: Counter[str] = field(default_factory=Counter)
    _devices: dict[str, _DeviceMeta] = field(default_factory=dict)
    #: id(reading) -> who waits to hear whether the store refused it (replays)
    _watched: dict[int, Refusals] = field(default_factory=dict)
    #: the latest health report of each agent
    health: dict[str, AgentHealth] = field(default_factory=dict)
    _last_seen: dict[str, int] = field(default_factory=dict)
    #: readings stored since the last flush: device -> collection window -> count
    _collected: dict[str, dict[int, int]] = field(default_factory=dict)
    #: edge time of each agent's latest birth message (names its Last Will in the event log)
    _online_ts: dict[str, int] = field(default_factory=dict)

    async def load_devices(self) -> None:
        for row in await self.registry.list_devices():
            self._remember(row.device_id, row.agent_id, row.profile)

    def _remember(self, device_id: str, agent_id: str, profile_ref: str) -> None:
        try:
            profile = resolve_profile(profile_ref)
        except ProfileError as exc:
            log.error("device has an unknown profile", device_id=device_id, error=str(exc))
            return
        self._devices[device_id] = _DeviceMeta(agent_id, profile)

    def profile_of(self, device_id: str) -> DeviceProfile | None:
        meta = self._devices.get(device_id)
        return meta.profile if meta else None

    def dead_letter(
        self,
        topic: str,
        reason: str,
        payload: bytes,
        *,
        agent_id: str | None = None,
        event: str = "dead letter",
    ) -> None:
        """Count, log (as ``event``) and keep a refused message or reading with the reason
        (never raises). ``agent_id`` defaults to the one ``topic`` names."""
        refusals = _REFUSALS.get()
        if refusals is not None:
            refusals.reasons.append(reason)
            if refusals.record_only:
                log.info("refused again", topic=topic, reason=reason)
                return
        self.stats["dead_letters"] += 1
        self.dead_letters.add(topic, reason, payload, agent_id=agent_id)
        log.warning(event, topic=topic, reason=reason)

    @contextlib.contextmanager
    def refusals(self, *, record_only: bool = False) -> Iterator[Refusals]:
        """Collect what is refused of the messages this task hands to :meth:`handle` within
        the block, and of the readings passed to :meth:`watch_store` (for replays); with
        ``record_only`` what :meth:`handle` refuses is not dead-lettered again."""
        seen = Refusals(record_only=record_only)
        token = _REFUSALS.set(seen)
        try:
            yield seen
        finally:
            _REFUSALS.reset(token)
            for key in [k for k, v in self._watched.items() if v is seen]:
                del self._watched[key]

    def watch_store(self, refusals: Refusals, readings: Sequence[StoredReading]) -> None:
        """Note in ``refusals`` whether the store refuses these readings (the very objects)."""
        for reading in readings:
            self._watched[id(reading)] = refusals

    async def handle(self, topic: str, payload: bytes) -> Accepted:
        """Validate one message and apply its registry effects; return what is left to do."""
        self.stats["messages"] += 1
        channel = None
        try:
            agent_id, channel = parse_topic(topic)
            if channel is Channel.TELEMETRY:
                return self._telemetry(topic, agent_id, payload)
            if channel is Channel.STATE:
                await self._state(agent_id, decode(AgentState, payload))
            elif channel is Channel.EVENTS:
                await self._event(agent_id, decode(DeviceEvent, payload))
            elif channel is Channel.CONFIG_REPORTED:
                report = decode(ReportedConfig, payload)
                if report.agent_id != agent_id:
                    self.dead_letter(
                        topic, f"report of {report.agent_id!r} in {agent_id!r}'s namespace", payload
                    )
                else:
                    await self.registry.config_reported(
                        agent_id, report.version, report.status, report.detail
                    )
            elif channel is Channel.HEALTH:
                self._health(agent_id, decode(AgentHealth, payload))
            elif channel is Channel.COMMAND_RESULTS:
                self.stats["command_results"] += 1
                return Accepted(command_result=decode(CommandResult, payload))
            else:
                self.dead_letter(topic, f"the hub does not consume {channel.value!r}", payload)
        except WireError as exc:
            self.dead_letter(topic, str(exc), payload)
            if channel is Channel.TELEMETRY:  # kept as a dead letter: the agent may forget it
                return Accepted(batch=batch_of(topic, payload))
        return NOTHING

    def learn_devices(self, topic: str, payload: bytes) -> None:
        """Note an agent's devices from its birth message, without touching the registry.

        The telemetry session sees agents' state messages too, so that a device's first
        readings, which may arrive before the control session has registered the device,
        are not dead-lettered as unknown. Invalid messages are left to the control session.
        """
        try:
            agent_id, _ = parse_topic(topic)
            state = decode(AgentState, payload)
        except WireError:
            return
        if state.agent_id == agent_id:
            for info in state.devices or ():
                known = self._devices.get(info.device_id)
                if known is None or known.agent_id == agent_id:  # never another's device
                    self._remember(info.device_id, agent_id, info.profile)

    def stored(self, readings: Sequence[StoredReading]) -> None:
        """Readings are in the store: count them, note last-seen, tell the event bus."""
        self.stats["readings"] += len(readings)
        for r in readings:
            if r.ts_ms > self._last_seen.get(r.device_id, 0):
                self._last_seen[r.device_id] = r.ts_ms
            windows = self._collected.setdefault(r.device_id, {})
            window = r.ts_ms // COLLECTION_WINDOW_MS
            windows[window] = windows.get(window, 0) + 1
            self.events.publish(telemetry_event(r))

    def rejected(self, readings: Sequence[StoredReading], reason: str) -> None:
        """The store refused readings for good: dead-letter them with the reason."""
        for r in readings[:100]:
            self.dead_letter(
                f"store:{r.device_id}", reason, repr(r.values).encode(), agent_id=r.agent_id
            )
        self.stats["dead_letters"] += max(0, len(readings) - 100)
        if self._watched:
            for r in readings:
                watcher = self._watched.get(id(r))
                if watcher is not None:
                    watcher.store_refused += 1
                    if reason not in watcher.reasons:
                        watcher.reasons.append(reason)

    async def flush_last_seen(self) -> None:
        """Write the newest read time of each device, and its readings per collection window,
        to the registry (called periodically)."""
        seen, self._last_seen = self._last_seen, {}
        collected, self._collected = self._collected, {}
        if seen or collected:
            await self.registry.touch_devices(seen, collected)

    async def _state(self, agent_id: str, state: AgentState) -> None:
        if state.agent_id != agent_id:
            raise WireError(
                f"state of agent {state.agent_id!r} published in {agent_id!r}'s namespace"
            )
        if state.state == "online" and await self._revoked(agent_id):
            # a revoked agent cannot connect: this is the broker's retained copy of a birth
            # from before, which would bring it back online (its Last Will never came)
            self.stats["revoked_births"] += 1
            log.warning("birth of a revoked agent ignored", agent_id=agent_id)
            return
        refused = await self.registry.agent_state(
            agent_id, state.state, state.software_version, state.devices, state.report_interval_s
        )
        owners = dict(refused)
        for info in state.devices or ():
            if info.device_id not in owners:
                self._remember(info.device_id, agent_id, info.profile)
        for device_id, owner in refused:
            await self._claim_refused(agent_id, device_id, owner)
        devices = None if state.devices is None else len(state.devices)
        log.info("agent state", agent_id=agent_id, state=state.state, devices=devices)
        key = None  # the event log keys it by its time...
        if state.ts is not None and state.state == "online":
            self._online_ts[agent_id] = state.ts
        elif state.ts is None and agent_id in self._online_ts:
            # ... but a Last Will has none: every process that saw the birth names it alike
            key = f"status:agent:{agent_id}:-:{state.state}:after-{self._online_ts[agent_id]}"
        self.events.publish(
            HubEvent(
                kind="status",
                ts_ms=state.ts or _now_ms(),
                agent_id=agent_id,
                data={"scope": "agent", "state": state.state},
                key=key,
            )
        )

    async def _revoked(self, agent_id: str) -> bool:
        async with self.registry.session() as db:
            row = await db.get(AgentCredentialRow, agent_id)
        return row is not None and row.revoked_at is not None

    async def cut_off(self, agent_id: str, reason: str) -> None:
        """The hub disconnected an agent for good (its credentials revoked): the broker drops
        it without its Last Will, so the hub records it offline itself, with a ``status``
        event like the Last Will's (the alarm engine raises ``agent_offline`` from it)."""
        ts_ms = _now_ms()
        await self.registry.agent_state(agent_id, "offline", None, None)
        self._online_ts.pop(agent_id, None)
        log.warning("agent cut off: offline", agent_id=agent_id, reason=reason)
        self.events.publish(
            HubEvent(
                kind="status",
                ts_ms=ts_ms,
                agent_id=agent_id,
                data={"scope": "agent", "state": "offline", "reason": reason},
                key=f"status:agent:{agent_id}:-:offline:{reason}-{ts_ms}",
            )
        )

    async def _claim_refused(self, agent_id: str, device_id: str, owner: str) -> None:
        """Agent ``agent_id`` announced a device of another agent: refused (the device stays
        with its owner), counted, audited, and a ``claim_refused`` device status (which the
        alarm engine raises as ``device_claim_refused``). Only an operator moves a device."""
        self.stats["claims_refused"] += 1
        self._remember_owner(device_id, owner)
        log.warning(
            "device claimed by another agent refused",
            device_id=device_id,
            claimed_by=agent_id,
            owner=owner,
        )
        async with self.registry.session.begin() as db:
            db.add(
                AuditRow(
                    at=utcnow(),
                    actor=f"agent:{agent_id}",
                    action="device.claim_refused",
                    target=f"device:{device_id}",
                    detail={"owner": owner},
                )
            )
        self.events.publish(
            HubEvent(
                kind="status",
                ts_ms=_now_ms(),
                device_id=device_id,
                agent_id=agent_id,
                data={"scope": "device", "state": "claim_refused", "owner": owner},
            )
        )

    def _remember_owner(self, device_id: str, owner: str) -> None:
        """Undo what :meth:`learn_devices` may have noted of a refused claim."""
        meta = self._devices.get(device_id)
        if meta is not None and meta.agent_id != owner:
            meta.agent_id = owner

    def move_device(self, device_id: str, agent_id: str, profile_ref: str) -> None:
        """An operator moved a device to ``agent_id`` (the registry already says so)."""
        self._remember(device_id, agent_id, profile_ref)

    def _health(self, agent_id: str, health: AgentHealth) -> None:
        if health.agent_id != agent_id:
            raise WireError(f"health of {health.agent_id!r} published in {agent_id!r}'s namespace")
        self.health[agent_id] = health

    async def _event(self, agent_id: str, event: DeviceEvent) -> None:
        meta = self._devices.get(event.device_id)
        if meta is None or meta.agent_id != agent_id:
            raise WireError(f"event for device {event.device_id!r}, not registered to {agent_id!r}")
        if event.kind in ("online", "offline"):
            await self.registry.device_status(event.device_id, event.kind)
            self.events.publish(
                HubEvent(
                    kind="status",
                    ts_ms=event.ts,
                    device_id=event.device_id,
                    agent_id=agent_id,
                    data={"scope": "device", "state": event.kind, "detail": event.detail},
                )
            )

    def _telemetry(self, topic: str, agent_id: str, payload: bytes) -> Accepted:
        stored, refused, seq = self._check_telemetry(agent_id, payload)
        for reason in refused:
            self.dead_letter(topic, reason, payload)
        return Accepted(readings=stored, batch=(agent_id, seq))

    def check_telemetry(self, topic: str, payload: bytes) -> tuple[list[StoredReading], list[str]]:
        """Validate a telemetry message as :meth:`handle` does, without any side effect: the
        valid readings and why the others were refused. Raises WireError for a bad envelope.
        For the leader's alarm feed, which sees the messages other processes ingest."""
        agent_id, channel = parse_topic(topic)
        if channel is not Channel.TELEMETRY:
            raise WireError(f"{topic!r} is not a telemetry topic")
        stored, refused, _ = self._check_telemetry(agent_id, payload)
        return stored, refused

    def _check_telemetry(
        self, agent_id: str, payload: bytes
    ) -> tuple[list[StoredReading], list[str], int]:
        batch, bad = decode_telemetry(payload)
        if batch.agent_id != agent_id:
            raise WireError(
                f"batch of agent {batch.agent_id!r} published in {agent_id!r}'s namespace"
            )
        refused = [f"seq {batch.seq} reading {index}: {reason}" for index, reason in bad]
        stored: list[StoredReading] = []
        rejected = {index for index, _ in bad}
        # positions of the valid readings in the payload, for messages that point at them
        positions = [i for i in range(len(batch.readings) + len(bad)) if i not in rejected]
        latest_ms = _now_ms() + self.max_ahead_ms
        for index, reading in zip(positions, batch.readings, strict=True):
            meta = self._devices.get(reading.device_id)
            if meta is None or meta.agent_id != agent_id:
                reason = f"device {reading.device_id!r} is not registered to agent {agent_id!r}"
                refused.append(f"seq {batch.seq} reading {index}: {reason}")
                continue
            try:
                values = check_reading(meta.profile, reading, meta.kinds)
            except ValueError as exc:
                refused.append(f"seq {batch.seq} reading {index}: {exc}")
                continue
            if not self.min_ts_ms <= reading.ts <= latest_ms:
                reason = _outside_window(reading.ts, self.min_ts_ms, latest_ms)
                refused.append(f"seq {batch.seq} reading {index}: {reason}")
                continue
            stored.append(
                StoredReading(reading.device_id, agent_id, meta.profile.name, reading.ts, values)
            )
        return stored, refused, batch.seq


def batch_of(topic: str, payload: bytes) -> tuple[str, int] | None:
    """(agent id, seq) of a telemetry message whose envelope did not validate, when the
    topic names an agent and the payload still has a usable ``seq``: so that a batch kept
    as a dead letter is acknowledged, and not sent again forever."""
    try:
        agent_id, _ = parse_topic(topic)
        seq = json.loads(payload).get("seq")
    except (WireError, ValueError, AttributeError, RecursionError):
        return None
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63:
        return agent_id, seq
    return None


def _outside_window(ts: int, min_ts_ms: int, latest_ms: int) -> str:
    when = _iso(ts)
    if ts < min_ts_ms:
        return f"read time {when} is before {_iso(min_ts_ms)} (ingest.min_ts; device clock unset?)"
    return f"read time {when} is ahead of the hub's clock by more than ingest.max_ahead_s"


def _iso(ms: int) -> str:
    seconds = ms / 1000
    if seconds >= 253_402_300_800:  # past 9999-12-31
        return f"{ms} ms"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
