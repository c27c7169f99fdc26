"""Per-agent limits: what one agent's flood may cost the hub and the other agents.

Every message the hub's two MQTT sessions receive is checked, before it is queued, against its
agent's token buckets (messages per second and bytes per second, each with a burst) and a size
limit. A message over a limit is *shed*: acknowledged to the broker at once and never queued,
decoded or stored, so that a flood costs the hub one topic split and a PUBACK per message and
the broker's queue for the hub never fills behind it. What was shed is counted per agent and
reason (``rate``, ``bytes``, ``size``, ``blocked``).

A well-behaved agent never comes near the defaults: it sends at most a few batches a second
while live and, with stored acknowledgements, at most ``delivery.window_batches`` (16) batches
before the hub confirms them, also when the hub comes back to a backlog. A telemetry batch that
is shed is not acknowledged as stored, so an agent with ``delivery.confirm: stored`` sends it
again later and loses nothing; with ``confirm: broker`` it would be lost (give such agents
higher limits, or set ``agent_limits.enabled: false``).

An agent that keeps shedding is misbehaving: once ``alarm_after_shed`` messages were shed in
one episode (an episode ends after ``quiet_s`` without shedding) the hub raises an
``agent_flooding`` alarm (through a ``flooding`` agent status event) and audits it; past
``disable_after_shed`` (a policy, off by default) it revokes the agent's broker credentials
(as ``POST /api/v1/provisioning/agents/{id}/revoke`` does, audited as ``policy:agent_limits``)
and sheds everything the agent still sends until the hub restarts.

With several hub processes in a shared subscription group, each process sees its share of an
agent's telemetry: the limits hold per process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.events.bus import EventBus, HubEvent
from iot_runtime.mqtt_inbound import agent_of_topic

__all__ = ["AgentLimitSettings", "AgentLimiter", "AgentShedding"]

log = structlog.get_logger(__name__)

MiB = 1024 * 1024

#: revokes an agent's credentials (the provisioning service's revoke, with its actor)
Revoke = Callable[[str], Awaitable[object]]


class AgentLimitSettings(BaseModel):
    """What one agent may send to the hub (``agent_limits`` in hub.yaml)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    rate_msgs_s: float = Field(default=50.0, gt=0, description="Messages per second, sustained.")
    burst_msgs: int = Field(default=500, ge=1, description="Messages at once, above the rate.")
    rate_bytes_s: float = Field(default=8 * MiB, gt=0, description="Payload bytes per second.")
    burst_bytes: int = Field(default=64 * MiB, ge=1, description="Payload bytes at once.")
    max_message_bytes: int = Field(
        default=4 * MiB,
        ge=1,
        description="Larger messages are shed (set the broker's "
        "max_packet_size a little above, so that it refuses them first).",
    )
    quiet_s: float = Field(
        default=60.0, gt=0, description="An episode of shedding ends after this long without."
    )
    alarm_after_shed: int = Field(
        default=1000, ge=1, description="Raise agent_flooding once an episode shed this many."
    )
    disable_after_shed: int | None = Field(
        default=None,
        ge=1,
        description="Policy: revoke the agent's broker credentials once an episode shed this "
        "many (off by default).",
    )


class _Bucket:
    """A token bucket: ``level`` tokens now, refilled at ``rate`` per second up to ``burst``."""

    __slots__ = ("burst", "level", "rate", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.level, self.stamp = rate, burst, burst, now

    def take(self, amount: float, now: float) -> bool:
        level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if level < amount:
            self.level = level
            return False
        self.level = level - amount
        return True

    def full(self, now: float) -> bool:
        return self.level + (now - self.stamp) * self.rate >= self.burst


@dataclass
class AgentShedding:
    """What was shed of one agent's messages."""

    #: all shed since the hub started, by reason
    by_reason: Counter[str] = field(default_factory=Counter)
    #: shed in the current episode, and when it started and last shed (monotonic)
    episode: int = 0
    episode_started: float = 0.0
    last_shed: float = 0.0
    #: episode shed at the last report (log) of it
    reported: int = 0
    alarmed: bool = False
    #: credentials revoked by the policy: everything it sends is shed
    blocked: bool = False

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())


class AgentLimiter:
    """The per-agent token buckets and the shedding they cause (see the module docstring).

    :meth:`admit` runs in the MQTT clients' read path (synchronous, cheap); :meth:`run`
    (a hub task) reports episodes, raises the alarm and applies the policy."""

    def __init__(
        self,
        settings: AgentLimitSettings,
        events: EventBus,
        revoke: Revoke | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._events = events
        self._revoke = revoke
        self._clock = clock
        self._buckets: dict[str, tuple[_Bucket, _Bucket]] = {}
        self.shedding: dict[str, AgentShedding] = {}
        #: agents with shedding not yet looked at by :meth:`review`
        self._dirty: set[str] = set()
        self.stats: Counter[str] = Counter()

    # -- the read path ----------------------------------------------------------------------

    def admit(self, topic: str, size: int) -> bool:
        """Whether a received message of ``size`` payload bytes on ``topic`` may be queued."""
        if not self.settings.enabled:
            return True
        agent_id = agent_of_topic(topic)
        shedding = self.shedding.get(agent_id)
        if shedding is not None and shedding.blocked:
            return self._shed(agent_id, "blocked")
        s = self.settings
        if size > s.max_message_bytes:
            return self._shed(agent_id, "size")
        now = self._clock()
        buckets = self._buckets.get(agent_id)
        if buckets is None:
            buckets = self._buckets[agent_id] = (
                _Bucket(s.rate_msgs_s, s.burst_msgs, now),
                _Bucket(s.rate_bytes_s, s.burst_bytes, now),
            )
        messages, volume = buckets
        if not messages.take(1, now):
            return self._shed(agent_id, "rate")
        if not volume.take(size, now):
            messages.level += 1  # not sent after all
            return self._shed(agent_id, "bytes")
        return True

    def _shed(self, agent_id: str, reason: str) -> bool:
        now = self._clock()
        shedding = self.shedding.get(agent_id)
        if shedding is None:
            shedding = self.shedding[agent_id] = AgentShedding()
        if shedding.episode == 0 or now - shedding.last_shed > self.settings.quiet_s:
            shedding.episode, shedding.reported, shedding.alarmed = 0, 0, False
            shedding.episode_started = now
        shedding.episode += 1
        shedding.last_shed = now
        shedding.by_reason[reason] += 1
        self.stats[reason] += 1
        self._dirty.add(agent_id)
        return False

    # -- reports, alarm, policy -------------------------------------------------------------

    def over_limit(self) -> list[str]:
        """Agents that shed within the last ``quiet_s``."""
        now = self._clock()
        return sorted(
            agent_id
            for agent_id, s in self.shedding.items()
            if s.episode and now - s.last_shed <= self.settings.quiet_s
        )

    async def run(self, interval_s: float = 1.0) -> None:
        """Review the agents that shed, every ``interval_s``, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.review()

    async def review(self) -> None:
        """Log, alarm and apply the policy for the agents that shed since the last review;
        forget the buckets of idle agents (a full bucket is no state)."""
        dirty, self._dirty = self._dirty, set()
        for agent_id in sorted(dirty):
            await self._review(agent_id, self.shedding[agent_id])
        if len(self._buckets) > 10_000:
            now = self._clock()
            for agent_id in [
                a for a, (m, v) in self._buckets.items() if m.full(now) and v.full(now)
            ]:
                del self._buckets[agent_id]

    async def _review(self, agent_id: str, shedding: AgentShedding) -> None:
        s = self.settings
        if shedding.reported == 0 or shedding.episode >= 2 * shedding.reported:
            shedding.reported = shedding.episode  # logged at 1, 2, 4, 8 ... shed an episode
            log.warning(
                "agent over its limits: messages shed",
                agent_id=agent_id,
                episode_shed=shedding.episode,
                by_reason=dict(shedding.by_reason),
                rate_msgs_s=s.rate_msgs_s,
                burst_msgs=s.burst_msgs,
            )
        if not shedding.alarmed and shedding.episode >= s.alarm_after_shed:
            shedding.alarmed = True
            self.stats["alarms"] += 1
            self._events.publish(
                HubEvent(
                    kind="status",
                    ts_ms=time.time_ns() // 1_000_000,
                    agent_id=agent_id,
                    data={
                        "scope": "agent",
                        "state": "flooding",
                        "shed": shedding.episode,
                        "by_reason": dict(shedding.by_reason),
                        "rate_msgs_s": s.rate_msgs_s,
                    },
                )
            )
        limit = s.disable_after_shed
        if limit is not None and not shedding.blocked and shedding.episode >= limit:
            shedding.blocked = True
            self.stats["disabled"] += 1
            log.error(
                "agent disabled by policy: its broker credentials are revoked",
                agent_id=agent_id,
                episode_shed=shedding.episode,
                disable_after_shed=limit,
            )
            if self._revoke is not None:
                try:
                    await self._revoke(agent_id)
                except Exception as exc:  # noqa: BLE001 - still blocked at the hub
                    log.error(
                        "could not revoke the agent's credentials: shed at the hub only",
                        agent_id=agent_id,
                        error=str(exc),
                    )
