"""Alarm persistence: the few queries the alarm engine and the API make, in one place.

State changes are single conditional ``UPDATE`` statements, so an operator acknowledging an
alarm while the engine clears it can never move it backwards, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, case, delete, or_, select, update

from cloud_hub.alarms.models import OPEN_STATES, AlarmRow, AlarmTimerRow
from cloud_hub.registry import AgentRow, DeviceRow, Registry

__all__ = [
    "AlarmAlreadyAcknowledged",
    "AlarmError",
    "AlarmNotFound",
    "AlarmPage",
    "AlarmStore",
    "InvalidCursor",
    "aware",
]


class AlarmError(Exception):
    """Base of the alarm errors::

    AlarmError
    ├── AlarmNotFound (also a LookupError)
    ├── AlarmAlreadyAcknowledged
    └── InvalidCursor (also a ValueError)
    """


class AlarmNotFound(AlarmError, LookupError):
    def __init__(self, alarm_id: str) -> None:
        super().__init__(f"no alarm '{alarm_id}'")
        self.alarm_id = alarm_id


class AlarmAlreadyAcknowledged(AlarmError):
    def __init__(self, row: AlarmRow) -> None:
        super().__init__(
            f"alarm '{row.alarm_id}' was already acknowledged by {row.acknowledged_by!r}"
            f" at {row.acknowledged_at and aware(row.acknowledged_at).isoformat()}"
        )
        self.alarm = row


class InvalidCursor(AlarmError, ValueError):
    pass


def aware(value: datetime) -> datetime:
    """A datetime in UTC (SQLite hands back naive datetimes for timezone-aware columns)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    return aware(value).astimezone(UTC)


def _encode_cursor(row: AlarmRow) -> str:
    micros = int(_utc(row.raised_at).timestamp() * 1_000_000)
    return base64.urlsafe_b64encode(f"{micros}:{row.alarm_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, alarm_id = text.split(":", 1)
        when = datetime.fromtimestamp(int(micros) / 1_000_000, UTC)
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, OSError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    return when, alarm_id


@dataclass(frozen=True)
class AlarmPage:
    items: list[AlarmRow]
    #: pass as ``cursor`` to get the next (older) page; None on the last page
    next_cursor: str | None


class AlarmStore:
    """Alarm rows in the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self._session = registry.session

    # -- the engine's side ------------------------------------------------------------------

    async def open_alarms(self) -> list[AlarmRow]:
        async with self._session() as db:
            query = select(AlarmRow).where(AlarmRow.state.in_(OPEN_STATES))
            return list((await db.scalars(query)).all())

    async def timers(self) -> list[AlarmTimerRow]:
        async with self._session() as db:
            return list((await db.scalars(select(AlarmTimerRow))).all())

    async def add(self, row: AlarmRow) -> None:
        async with self._session.begin() as db:
            db.add(row)
            await db.execute(
                delete(AlarmTimerRow).where(
                    (AlarmTimerRow.device_id == (row.device_id or f"@{row.agent_id}"))
                    & (AlarmTimerRow.rule == row.rule)
                )
            )

    async def clear(self, alarm_id: str, at: datetime) -> AlarmRow | None:
        """Clear an open alarm; None if it is not open (any more)."""
        async with self._session.begin() as db:
            result = await db.execute(
                update(AlarmRow)
                .where((AlarmRow.alarm_id == alarm_id) & AlarmRow.state.in_(OPEN_STATES))
                .values(state="cleared", cleared_at=at)
                .returning(AlarmRow.alarm_id)
            )
            if result.scalar() is None:
                return None
        return await self.get(alarm_id)

    async def set_timer(self, subject: str, rule: str, since_ms: int) -> None:
        async with self._session.begin() as db:
            row = await db.get(AlarmTimerRow, (subject, rule))
            if row is None:
                db.add(AlarmTimerRow(device_id=subject, rule=rule, since_ms=since_ms))
            else:
                row.since_ms = since_ms

    async def states(self) -> tuple[list[AgentRow], list[DeviceRow]]:
        """Every agent and device with the online/offline state ingest last recorded."""
        async with self._session() as db:
            agents = list((await db.scalars(select(AgentRow))).all())
            devices = list((await db.scalars(select(DeviceRow))).all())
        return agents, devices

    async def drop_timer(self, subject: str, rule: str) -> None:
        async with self._session.begin() as db:
            await db.execute(
                delete(AlarmTimerRow).where(
                    (AlarmTimerRow.device_id == subject) & (AlarmTimerRow.rule == rule)
                )
            )

    # -- the API's side ---------------------------------------------------------------------

    async def get(self, alarm_id: str) -> AlarmRow | None:
        async with self._session() as db:
            return await db.get(AlarmRow, alarm_id, populate_existing=True)

    async def acknowledge(self, alarm_id: str, by: str, note: str, at: datetime) -> AlarmRow:
        """Acknowledge an alarm, active or already cleared (it then stays cleared).

        Raises AlarmNotFound, or AlarmAlreadyAcknowledged if someone already did.
        """
        async with self._session.begin() as db:
            result = await db.execute(
                update(AlarmRow)
                .where((AlarmRow.alarm_id == alarm_id) & AlarmRow.acknowledged_at.is_(None))
                .values(
                    state=case((AlarmRow.state == "active", "acknowledged"), else_=AlarmRow.state),
                    acknowledged_at=at,
                    acknowledged_by=by,
                    acknowledged_note=note,
                )
                .returning(AlarmRow.alarm_id)
            )
            changed = result.scalar() is not None
        row = await self.get(alarm_id)
        if row is None:
            raise AlarmNotFound(alarm_id)
        if not changed:
            raise AlarmAlreadyAcknowledged(row)
        return row

    async def page(
        self,
        *,
        states: Sequence[str] = (),
        severities: Sequence[str] = (),
        device_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> AlarmPage:
        """Alarms, newest raised first, ``limit`` at a time (keyset pagination)."""
        query = select(AlarmRow)
        if states:
            query = query.where(AlarmRow.state.in_(states))
        if severities:
            query = query.where(AlarmRow.severity.in_(severities))
        if device_id is not None:
            query = query.where(AlarmRow.device_id == device_id)
        if cursor is not None:
            when, alarm_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    AlarmRow.raised_at < when,
                    and_(AlarmRow.raised_at == when, AlarmRow.alarm_id < alarm_id),
                )
            )
        query = query.order_by(AlarmRow.raised_at.desc(), AlarmRow.alarm_id.desc())
        async with self._session() as db:
            rows = list((await db.scalars(query.limit(limit + 1))).all())
        more = len(rows) > limit
        rows = rows[:limit]
        return AlarmPage(rows, _encode_cursor(rows[-1]) if more and rows else None)
