"""The leader lease: which one of several hub processes does the singleton duties.

Hub processes sharing one registry agree on a leader through one row of ``hub_leases``
(:class:`~cloud_hub.cluster.models.LeaseRow`). A process takes or renews the lease with a single
conditional ``UPDATE ... WHERE name = :name AND (holder = :me OR expires_at_ms < :now)`` and
``INSERT``\\s the row when it is missing (an ``IntegrityError`` there means another process
inserted it first and won). Both are atomic on PostgreSQL (row lock, the losing ``UPDATE``
re-checks its ``WHERE`` on the winner's row) and on SQLite (one writer at a time).

Timing, with ``ttl`` the lease time (``leader_lease_s``)::

    renew every ttl/3  ─┬─ written expiry: wall clock at the attempt's start + ttl
                        └─ local deadline: monotonic clock at the attempt's start + 5/6 ttl

The holder believes it leads until its *local* deadline, measured on its monotonic clock from
before it sent the renewal, so it gives up (stops its duties) at least ``ttl/6`` before any
other process can see the lease as expired; a renewal that hangs is abandoned at the
deadline. Other processes compare the written expiry with their own wall clock: host clocks
must agree to well within ``ttl/6`` (NTP). There is no fencing token: a holder frozen for
longer than ``ttl/6`` between its deadline check and a database write (a VM pause) could
still write once after another process took over; the duties it runs are idempotent or
conditional (alarm state changes, cursors), so such a write is harmless but not impossible.

:class:`SoleLease` is the lease of a hub process that runs alone (no shared subscription
group): it always leads, without touching the database.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog
from sqlalchemy import CursorResult, case, or_, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cloud_hub.cluster.models import LeaseRow
from cloud_hub.registry import Registry, utcnow

__all__ = ["LeaderLease", "Lease", "OnChange", "SoleLease", "holder_id", "wall_ms"]

log = structlog.get_logger(__name__)

#: part of the lease time a holder trusts its lease after the start of a successful renewal
LOCAL_VALIDITY = 5 / 6
#: renewals (and acquisition attempts) per lease time
ATTEMPTS_PER_TTL = 3

OnChange = Callable[[bool], Awaitable[None]]


def wall_ms() -> int:
    """Wall-clock time in ms since the epoch (what ``expires_at_ms`` is written in)."""
    return time.time_ns() // 1_000_000


def holder_id(client_id: str) -> str:
    """``{client_id}-{hostname}-{pid}-{random}``: unique per process and start, readable."""
    return f"{client_id}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Lease(Protocol):
    """What the hub needs of a lease: whether it leads, one attempt, keeping it, leaving."""

    @property
    def is_leader(self) -> bool: ...

    async def attempt(self) -> bool: ...

    async def keep(self, on_change: OnChange) -> None: ...

    async def release(self) -> None: ...


class SoleLease:
    """The lease of a hub process that runs alone: it leads from the start, always."""

    holder = "sole"

    @property
    def is_leader(self) -> bool:
        return True

    async def attempt(self) -> bool:
        return True

    async def keep(self, on_change: OnChange) -> None:
        await asyncio.Event().wait()

    async def release(self) -> None:
        return None


class LeaderLease:
    """One named lease in the registry, held by at most one hub process at a time.

    ``attempt()`` acquires or renews once; ``keep(on_change)`` does so every ``ttl_s / 3``
    until cancelled and awaits ``on_change(True)`` / ``on_change(False)`` when this process
    gains or loses the lease (including by its local deadline passing: see the module
    docstring); ``release()`` gives the lease up at once, so another process can take over
    without waiting for the expiry. ``clock`` (wall ms) and ``monotonic`` (seconds) are
    injectable for tests.
    """

    def __init__(
        self,
        registry: Registry,
        holder: str,
        ttl_s: float,
        *,
        name: str = "hub",
        clock: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.holder = holder
        self.name = name
        self.ttl_s = ttl_s
        self._session = registry.session
        self._clock = clock
        self._monotonic = monotonic
        self._deadline: float | None = None  # monotonic; None: not held

    @property
    def is_leader(self) -> bool:
        """Whether this process holds the lease now (by its own, conservative deadline)."""
        if self._deadline is not None and self._monotonic() >= self._deadline:
            self._deadline = None  # passed: it is gone, whatever the row still says
        return self._deadline is not None

    async def attempt(self) -> bool:
        """Acquire or renew the lease once: whether this process holds it afterwards.

        A database error propagates and leaves the state as it was (a holder then still
        leads until its local deadline).
        """
        started = self._monotonic()
        won = await self._claim(self._clock())
        self._deadline = started + self.ttl_s * LOCAL_VALIDITY if won else None
        return won

    async def _claim(self, now_ms: int) -> bool:
        expires = now_ms + int(self.ttl_s * 1000)
        async with self._session.begin() as db:
            result: CursorResult[Any] = await db.execute(  # type: ignore[assignment]  # DML gives a CursorResult
                update(LeaseRow)
                .where(
                    LeaseRow.name == self.name,
                    or_(LeaseRow.holder == self.holder, LeaseRow.expires_at_ms < now_ms),
                )
                .values(
                    holder=self.holder,
                    expires_at_ms=expires,
                    # SET sees the old row: a renewal keeps acquired_at, a takeover sets it
                    acquired_at=case(
                        (LeaseRow.holder == self.holder, LeaseRow.acquired_at), else_=utcnow()
                    ),
                )
            )
            if result.rowcount == 1:
                return True
            if await db.get(LeaseRow, self.name) is not None:
                return False  # held by another process, not expired
        try:
            async with self._session.begin() as db:
                db.add(
                    LeaseRow(
                        name=self.name,
                        holder=self.holder,
                        expires_at_ms=expires,
                        acquired_at=utcnow(),
                    )
                )
        except IntegrityError:
            return False  # another process inserted the row first: it won
        return True

    async def release(self) -> None:
        """Give the lease up (if held) so that another process may take it at once."""
        held, self._deadline = self._deadline is not None, None
        if not held:
            return
        try:
            async with self._session.begin() as db:
                await db.execute(
                    update(LeaseRow)
                    .where(LeaseRow.name == self.name, LeaseRow.holder == self.holder)
                    .values(expires_at_ms=0)
                )
            log.info("leader lease released", lease=self.name, holder=self.holder)
        except SQLAlchemyError as exc:  # it expires by itself
            log.warning("could not release the leader lease", lease=self.name, error=str(exc))

    async def keep(self, on_change: OnChange) -> None:
        """Acquire/renew every ``ttl_s / 3`` until cancelled; report gains and losses."""
        interval = self.ttl_s / ATTEMPTS_PER_TTL
        leading = self.is_leader
        while True:
            if leading and not self.is_leader:  # the deadline passed while we slept
                leading = False
                log.warning("leader lease expired locally: stepping down", lease=self.name)
                await on_change(False)
            started = self._monotonic()
            # a holder never waits on the database past its deadline
            deadline = self._deadline if self.is_leader else None
            budget = deadline - started if deadline is not None else interval
            try:
                async with asyncio.timeout(max(budget, 0.0)):
                    await self.attempt()
            except TimeoutError:
                log.warning("leader lease attempt timed out", lease=self.name, after_s=budget)
            except (SQLAlchemyError, OSError) as exc:
                log.warning("leader lease attempt failed", lease=self.name, error=str(exc))
            if self.is_leader != leading:
                leading = not leading
                log.info(
                    "leader lease acquired" if leading else "leader lease lost",
                    lease=self.name,
                    holder=self.holder,
                )
                await on_change(leading)
            wake = started + interval
            if self._deadline is not None:
                wake = min(wake, self._deadline)
            await asyncio.sleep(max(0.0, wake - self._monotonic()))
