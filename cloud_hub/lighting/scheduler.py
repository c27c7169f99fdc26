"""The leader's lighting duty: send each strategy's steps at their instants, once.

Each round (:meth:`LightingScheduler.tick`) reads the enabled strategies and, for each, the
steps scheduled after ``max(updated_at, now - lookback_s)`` up to now that have no firing row
yet. One at most ``catch_up_s`` late is claimed (its row inserted first: the UNIQUE key makes
a second leader's or a restarted hub's claim fail, and then nothing is sent) and sent as a
group command created by ``strategy:<id>``; an older one is recorded ``missed``. Then the
scheduler sleeps until the next step, at most ``poll_s`` (strategies written through another
hub process are seen then), or until :meth:`wake` (this process's API wrote a strategy).

One strategy that cannot be read or sent never stops the others: it is logged and its
firing recorded ``failed``. A registry that is down makes a round fail as a whole; the next
one (after ``poll_s``) catches up within ``catch_up_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.lighting.models import LightingFiringRow, LightingStrategyRow
from cloud_hub.lighting.schedule import firings_between, next_firing
from cloud_hub.lighting.settings import LightingSettings
from cloud_hub.lighting.store import Claim, LightingStore, aware, spec_of
from cloud_hub.registry import CommandGroupRow, utcnow
from device_profiles import CommandRejected

__all__ = ["GroupCommands", "LightingScheduler", "send_claimed"]

log = structlog.get_logger(__name__)


class GroupCommands(Protocol):
    """What the scheduler needs of the hub: :meth:`cloud_hub.hub.Hub.send_group_command`."""

    async def send_group_command(
        self,
        selector: dict[str, Any],
        name: str,
        params: dict[str, Any],
        ttl_s: float | None = None,
        created_by: str = "",
    ) -> CommandGroupRow: ...


async def send_claimed(
    store: LightingStore,
    commands: GroupCommands,
    firing: LightingFiringRow,
    selector: dict[str, Any],
    ttl_s: float,
) -> LightingFiringRow:
    """Send a claimed firing's command to the strategy's devices; record the outcome."""
    try:
        group = await commands.send_group_command(
            dict(selector),
            firing.command,
            dict(firing.params),
            ttl_s,
            created_by=f"strategy:{firing.strategy_id}",
        )
    except CommandRejected as exc:
        firing.outcome, firing.detail = "rejected", exc.reason
    except Exception as exc:  # one strategy's failure must not stop the scheduler
        log.exception("lighting step not sent", strategy_id=firing.strategy_id, step=firing.step)
        firing.outcome, firing.detail = "failed", f"{type(exc).__name__}: {exc}"
    else:
        refused = len(group.rejected)
        firing.outcome, firing.group_id = "sent", group.group_id
        firing.detail = f"refused by {refused} device(s)" if refused else ""
    await store.finish(firing.id, firing.outcome, firing.detail, firing.group_id)
    log.info(
        "lighting step fired",
        strategy_id=firing.strategy_id,
        step=firing.step,
        command=firing.command,
        outcome=firing.outcome,
        group_id=firing.group_id,
    )
    return firing


class LightingScheduler:
    """Runs the lighting strategies; ``clock`` (UTC now) is injectable for tests."""

    def __init__(
        self,
        store: LightingStore,
        commands: GroupCommands,
        settings: LightingSettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.commands = commands
        self.settings = settings
        self.clock = clock
        self._wake = asyncio.Event()
        self._skips_logged: set[tuple[str, int, date]] = set()

    def wake(self) -> None:
        """Strategies changed: compute the next step again now."""
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: a round, then sleep until the next step (at most ``poll_s``)."""
        poll = timedelta(seconds=self.settings.poll_s)
        while True:
            self._wake.clear()
            try:
                upcoming = await self.tick(self.clock())
            except (SQLAlchemyError, OSError) as exc:
                log.warning("lighting round failed: registry unavailable", error=str(exc))
                upcoming = None
            now = self.clock()
            wait = poll if upcoming is None else min(poll, max(upcoming - now, timedelta()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait.total_seconds())

    async def tick(self, now: datetime) -> datetime | None:
        """Handle every step due at ``now``; the next step's instant within ``poll_s``."""
        upcoming: datetime | None = None
        for row in await self.store.strategies(enabled_only=True):
            try:
                await self._due(row, now)
                spec = spec_of(row)
                found = next_firing(spec, now, timedelta(seconds=self.settings.poll_s))
            except (SQLAlchemyError, OSError):
                raise
            except Exception:  # a bad strategy is logged; the others go on
                log.exception("lighting strategy failed", strategy_id=row.strategy_id)
                continue
            if found is not None and (upcoming is None or found.at < upcoming):
                upcoming = found.at
        return upcoming

    async def _due(self, row: LightingStrategyRow, now: datetime) -> None:
        spec = spec_of(row)
        since = max(aware(row.updated_at), now - timedelta(seconds=self.settings.lookback_s))
        schedule = firings_between(spec, since, now)
        for skipped in schedule.skipped:
            key = (row.strategy_id, skipped.step, skipped.day)
            if key not in self._skips_logged:
                self._skips_logged.add(key)
                log.warning(
                    "lighting step skipped: no sun event that day",
                    strategy_id=row.strategy_id,
                    step=skipped.step,
                    day=skipped.day.isoformat(),
                    reason=skipped.reason,
                )
        if not schedule.firings:
            return
        handled = await self.store.handled(row.strategy_id, since)
        for firing in schedule.firings:
            if (firing.step, firing.at) in handled:
                continue
            claim = Claim(row.strategy_id, firing.step, firing.at, firing.command, firing.params)
            late_s = (now - firing.at).total_seconds()
            if late_s > self.settings.catch_up_s:
                recorded = await self.store.claim(
                    claim,
                    outcome="missed",
                    detail=f"{late_s:.0f} s late, more than catch_up_s "
                    f"({self.settings.catch_up_s:.0f} s): not sent",
                )
                if recorded is not None:
                    log.warning(
                        "lighting step missed",
                        strategy_id=row.strategy_id,
                        step=firing.step,
                        scheduled_for=firing.at.isoformat(),
                    )
                continue
            claimed = await self.store.claim(claim)
            if claimed is None:
                continue  # another leader, or this hub before a restart, has it
            await send_claimed(
                self.store, self.commands, claimed, row.selector, self.settings.command_ttl_s
            )
