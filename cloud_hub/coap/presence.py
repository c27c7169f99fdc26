"""Offline detection for agents that hold no connection (NB-IoT agents asleep between uplinks).

An MQTT agent's broker announces its end (the Last Will); an NB-IoT agent just stops sending.
Its birth message says how often it reports at the longest (``report_interval_s``, kept in
the registry), so the hub marks it ``offline`` once it has heard nothing from it for
``missed`` such intervals (plus the slack of its own bookkeeping), and ``online`` again at its
next uplink. Each change is one conditional ``UPDATE`` (whoever changes it publishes the
``status`` event, so two hub processes never announce it twice), followed by a ``status``
event like the Last Will's: the alarm engine raises and clears ``agent_offline`` from it, the
event log and webhooks carry it.

``seen()`` is called for every authenticated uplink (cheap, in memory); ``run()`` writes the
contact times to ``agents.last_seen`` every few seconds and sweeps for silent agents.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import and_, select, update

from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.registry import AgentRow, Registry

__all__ = ["Presence"]

log = structlog.get_logger(__name__)

FLUSH_INTERVAL_S = 2.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Presence:
    def __init__(
        self,
        registry: Registry,
        events: EventBus,
        missed: int = 3,
        *,
        sweeping: Callable[[], bool] = lambda: True,
        flush_interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        self.registry = registry
        self.events = events
        self.missed = missed
        #: whether this process sweeps (the leader, when several hub processes run)
        self.sweeping = sweeping
        self.flush_interval_s = flush_interval_s
        self._seen: dict[str, int] = {}

    def seen(self, agent_id: str) -> None:
        """An authenticated uplink from ``agent_id`` arrived now."""
        self._seen[agent_id] = _now_ms()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
                if self.sweeping():
                    await self.sweep()
            except Exception:  # a failing database waits for the next round; nothing is lost
                log.exception("presence round failed")

    async def flush(self) -> None:
        """Write contact times; bring back agents that were marked offline for silence."""
        seen, self._seen = self._seen, {}
        for agent_id, ts_ms in seen.items():
            when = datetime.fromtimestamp(ts_ms / 1000, UTC)
            async with self.registry.session.begin() as db:
                await db.execute(
                    update(AgentRow).where(AgentRow.agent_id == agent_id).values(last_seen=when)
                )
                back = await db.execute(
                    update(AgentRow)
                    .where(
                        and_(
                            AgentRow.agent_id == agent_id,
                            AgentRow.state == "offline",
                            AgentRow.report_interval_s.is_not(None),
                        )
                    )
                    .values(state="online", state_changed_at=when)
                )
            if back.rowcount:  # type: ignore[attr-defined]
                log.info("agent reports again", agent_id=agent_id)
                self._publish(agent_id, "online", ts_ms, "reports again")

    async def sweep(self) -> None:
        """Mark offline every agent with a report interval that missed ``missed`` reports."""
        now = datetime.now(UTC)
        async with self.registry.session() as db:
            rows = (
                await db.execute(
                    select(AgentRow.agent_id, AgentRow.report_interval_s, AgentRow.last_seen).where(
                        and_(AgentRow.state == "online", AgentRow.report_interval_s.is_not(None))
                    )
                )
            ).all()
        for agent_id, interval_s, last_seen in rows:
            if agent_id in self._seen or last_seen is None or interval_s is None:
                continue  # heard from since the last flush
            # the slack: contact times reach the registry up to one flush late
            silence = timedelta(seconds=interval_s * self.missed + 2 * self.flush_interval_s)
            last = last_seen if last_seen.tzinfo is not None else last_seen.replace(tzinfo=UTC)
            if now - last < silence:
                continue
            async with self.registry.session.begin() as db:
                gone = await db.execute(
                    update(AgentRow)
                    .where(
                        and_(
                            AgentRow.agent_id == agent_id,
                            AgentRow.state == "online",
                            AgentRow.last_seen < now - silence,  # not heard from meanwhile
                        )
                    )
                    .values(state="offline", state_changed_at=now)
                )
            if gone.rowcount:  # type: ignore[attr-defined]
                quiet_s = (now - last).total_seconds()
                reason = f"no uplink for {quiet_s:.0f} s (reports every {interval_s:g} s)"
                log.warning("agent silent: offline", agent_id=agent_id, reason=reason)
                self._publish(agent_id, "offline", int(now.timestamp() * 1000), reason)

    def _publish(self, agent_id: str, state: str, ts_ms: int, reason: str) -> None:
        self.events.publish(
            HubEvent(
                kind="status",
                ts_ms=ts_ms,
                agent_id=agent_id,
                data={"scope": "agent", "state": state, "reason": reason},
                key=f"status:agent:{agent_id}:-:{state}:presence-{ts_ms}",
            )
        )
