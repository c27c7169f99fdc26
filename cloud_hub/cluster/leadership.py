"""The leader-only duties of a hub process, started and stopped with the leader lease.

Some work must be done by exactly one of the hub processes sharing a broker and a registry:
the alarm engine (one alarm per fact, durations over all of a device's readings), the webhook
relay (one delivery per logged event), the command expiry sweep, the lighting scheduler
(one command group per strategy step) and, with a shared subscription group, the alarm
engine's own telemetry feed. :class:`Leadership` runs them while this process holds the
lease (:mod:`cloud_hub.cluster.lease`):

- on gaining it, ``prepare()`` (the alarm engine's ``start()``: it reloads open alarms and
  running timers from the registry), then every duty as a task;
- on losing it (another process took it, or the local deadline passed without a renewal),
  the duties are cancelled, then ``finish()`` (the engine's ``close()``), before the lease can
  pass to another process.

A process that runs alone has a :class:`~cloud_hub.cluster.lease.SoleLease`: it leads from
:meth:`Leadership.start` on, exactly like a hub before leases existed. A duty that crashes (a
bug: each duty handles its own errors) is logged and its set restarted after
``RESTART_DELAY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.cluster.lease import Lease

__all__ = ["RESTART_DELAY_S", "Duty", "Leadership"]

log = structlog.get_logger(__name__)

#: seconds before duties that crashed run again
RESTART_DELAY_S = 5.0

#: a duty: its task name and what it runs until cancelled
Duty = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


class Leadership:
    """Runs ``duties`` while ``lease`` is held.

    ``start()`` makes one attempt at the lease (and prepares if it won); ``run()`` keeps the
    lease and the duties until cancelled; ``close()`` stops the duties and releases the lease.
    """

    def __init__(
        self,
        lease: Lease,
        duties: Sequence[Duty],
        *,
        prepare: Callable[[], Awaitable[None]],
        finish: Callable[[], None],
    ) -> None:
        self.lease = lease
        self.changes = 0  # times this process gained or lost the lead
        self._duties = list(duties)
        self._prepare = prepare
        self._finish = finish
        self._leading = False  # prepared, duties running (or about to)
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this process leads now: it holds the lease and runs the duties."""
        return self._leading and self.lease.is_leader

    async def start(self) -> None:
        """One attempt at the lease; if won, ``prepare()`` (its errors propagate)."""
        try:
            won = await self.lease.attempt()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("leader lease not acquired at start-up", error=str(exc))
            won = False
        if won:
            await self._prepare()
            self._leading = True
            self.changes += 1

    async def run(self) -> None:
        """Keep the lease, and the duties while it is held, until cancelled."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if self._leading:
                    self._launch()
                await self.lease.keep(self._changed)
            finally:
                self._group = None
                await self._stop()

    async def close(self) -> None:
        """Stop the duties and give the lease up, so another process takes over at once."""
        await self._stop()
        await self.lease.release()

    async def _changed(self, leading: bool) -> None:
        if not leading:
            log.warning("leading no more: leader duties stop")
            await self._stop()
            return
        try:
            await self._prepare()
        except (SQLAlchemyError, OSError) as exc:  # try again with the next renewal
            log.error("leader duties could not start: giving the lease up", error=str(exc))
            await self.lease.release()
            return
        self._leading = True
        self.changes += 1
        log.info("leading: leader duties start", duties=[name for name, _ in self._duties])
        self._launch()

    def _launch(self) -> None:
        if self._group is not None and self._task is None:
            self._task = self._group.create_task(self._run_duties(), name="leader-duties")

    async def _run_duties(self) -> None:
        while True:
            try:
                async with asyncio.TaskGroup() as duties:
                    for name, duty in self._duties:
                        duties.create_task(duty(), name=name)
            except Exception:  # a bug in a duty: log it, run the set again
                log.exception("a leader duty crashed; restarting the duties")
            await asyncio.sleep(RESTART_DELAY_S)

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._leading:
            self._leading = False
            self.changes += 1
            self._finish()
