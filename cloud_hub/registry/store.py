"""Registry access: the few queries the hub makes, in one place."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, event, false, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from cloud_hub.registry.migrate import current_revision, head_revision, upgrade
from cloud_hub.registry.models import (
    AgentConfigRow,
    AgentRow,
    ApiKeyRow,
    CommandGroupRow,
    CommandRow,
    DeviceRow,
)
from device_profiles.wire import TERMINAL_COMMAND_STATUSES, DeviceInfo

__all__ = [
    "TAG_KEY_PATTERN",
    "TERMINAL_STATUSES",
    "DeviceFilter",
    "Registry",
    "RegistryError",
    "utcnow",
]

#: Command statuses after which nothing changes any more (the wire contract's).
TERMINAL_STATUSES = TERMINAL_COMMAND_STATUSES
#: The order of the non-terminal statuses; a late report never moves a command backwards.
_PROGRESS = {"queued": 0, "sent": 1, "delivered": 2}
RESULT_GRACE_MS = 60_000
#: what a tag's key may hold: ASCII letters, digits, ``_ . : -`` (it goes into a JSON path)
TAG_KEY_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
TAG_KEY = re.compile(TAG_KEY_PATTERN)


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices a list shows: ``site`` None is every site (a site-scoped caller's own
    site is set here, never left to the caller); ``search`` is a part of the device id."""

    site: str | None = None
    profile: str | None = None
    status: str | None = None
    search: str | None = None
    #: tags the devices must all carry with these values
    tags: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def tag_pairs(values: Sequence[str]) -> dict[str, str]:
        """``["road=G205", "kind=lamp"]`` as tags; ValueError naming one without ``=``."""
        tags: dict[str, str] = {}
        for value in values:
            key, sep, wanted = value.partition("=")
            key = key.strip()
            if not sep or not TAG_KEY.fullmatch(key):
                raise ValueError(
                    f"tag filter {value!r} is not key=value with a key of letters, digits, "
                    "'_', '.', ':' or '-' (at most 64)"
                )
            tags[key] = wanted.strip()
        return tags


class RegistryError(RuntimeError):
    """The registry database cannot be used as it is (e.g. its schema is out of date)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _tagged(tags: Mapping[str, str]) -> list[ColumnElement[bool]]:
    """SQL conditions: the device's tag ``key`` is ``value``, for each of ``tags`` (a JSON
    path, on SQLite and PostgreSQL alike). A key outside :data:`TAG_KEY` cannot be put in a
    JSON path safely: it selects nothing."""
    return [
        DeviceRow.tags[key].as_string() == value if TAG_KEY.fullmatch(key) else false()
        for key, value in tags.items()
    ]


def _count_collected(device: DeviceRow, window: int, count: int) -> None:
    """Add ``count`` readings of collection window ``window`` to the device's two windows
    (the newest and the one before it); an older window's readings are no longer counted."""
    newest = device.collect_window
    if newest is None or window > newest:
        before = (device.collect_count or 0) if newest == window - 1 else 0
        device.collect_window, device.collect_previous, device.collect_count = window, before, 0
        newest = window
    if window == newest:
        device.collect_count = (device.collect_count or 0) + count
    elif window == newest - 1:
        device.collect_previous = (device.collect_previous or 0) + count


def _sqlite_write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """SQLite in WAL mode: readers no longer hold writers' commits back (in the default
    rollback-journal mode a commit waits for every open read to end, which under load ran
    into the busy timeout), and a writer blocks no reader. Persistent in the file; an
    in-memory database keeps its own journal ("memory")."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Registry:
    def __init__(self, url: str, *, auto_migrate: bool = True) -> None:
        self.auto_migrate = auto_migrate
        # SQLite: a writer waits for the others' locks up to 30 s (sqlite3's default, 5 s, is
        # exceeded on a loaded 2-core machine by a commit waiting for readers to finish)
        connect_args = {"timeout": 30.0} if url.startswith("sqlite") else {}
        self.engine: AsyncEngine = create_async_engine(
            url, pool_pre_ping=True, connect_args=connect_args
        )
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_write_ahead_log)
        self.session: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    async def start(self) -> None:
        if self.engine.url.get_backend_name() == "sqlite" and self.engine.url.database:
            from pathlib import Path  # noqa: PLC0415 - only SQLite needs the folder

            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            if self.auto_migrate:
                await conn.run_sync(upgrade)
            else:
                current = await conn.run_sync(current_revision)
                if current != head_revision():
                    raise RegistryError(
                        f"the registry schema is at {current or 'nothing'}, this hub needs "
                        f"{head_revision()}: run `cloud-hub migrate`"
                    )

    async def close(self) -> None:
        await self.engine.dispose()

    # -- agents and devices ---------------------------------------------------------------

    async def agent_state(
        self,
        agent_id: str,
        state: str,
        software_version: str | None,
        devices: Sequence[DeviceInfo] | None,
        report_interval_s: float | None = None,
    ) -> list[tuple[str, str]]:
        """Record an agent's state and devices (None: not stated, left as they are). Several
        hub processes may record the same birth message at once: a lost insert race is
        retried as an update.

        A device belongs to the agent that first announced it (or that an operator moved it
        to, :meth:`move_device`): one that another agent already has is left alone, and
        returned as ``(device_id, owner)`` among the refused claims."""
        for attempt in range(3):
            try:
                return await self._agent_state(
                    agent_id, state, software_version, devices, report_interval_s
                )
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _agent_state(
        self,
        agent_id: str,
        state: str,
        software_version: str | None,
        devices: Sequence[DeviceInfo] | None,
        report_interval_s: float | None,
    ) -> list[tuple[str, str]]:
        now = utcnow()
        refused: list[tuple[str, str]] = []
        async with self.session.begin() as db:
            agent = await db.get(AgentRow, agent_id)
            if agent is None:
                agent = AgentRow(agent_id=agent_id, created_at=now)
                db.add(agent)
            agent.state = state
            agent.state_changed_at = now
            if state == "online":
                agent.last_seen = now
                if software_version is not None:
                    agent.software_version = software_version
                agent.report_interval_s = report_interval_s
            for info in devices or ():
                device = await db.get(DeviceRow, info.device_id)
                if device is None:
                    device = DeviceRow(device_id=info.device_id, created_at=now)
                    db.add(device)
                elif device.agent_id and device.agent_id != agent_id:
                    refused.append((info.device_id, device.agent_id))
                    continue
                device.agent_id = agent_id
                device.profile = info.profile
                if info.reading_interval_s is not None:
                    device.reading_interval_s = info.reading_interval_s
        return refused

    async def move_device(self, device_id: str, agent_id: str) -> DeviceRow | None:
        """Give a device to another agent (an operator's decision); None if it is unknown."""
        async with self.session.begin() as db:
            device = await db.get(DeviceRow, device_id)
            if device is None:
                return None
            device.agent_id = agent_id
        return device

    #: the columns :meth:`update_device` changes: a device's metadata, nothing the hub keeps
    DEVICE_METADATA = frozenset({"site", "pole", "mount_position", "lat", "lon", "tags"})

    async def update_device(self, device_id: str, changes: dict[str, Any]) -> DeviceRow | None:
        """Set some of a device's metadata (:data:`DEVICE_METADATA`, by column; None clears
        one); None if the device is unknown. ValueError for any other column."""
        unknown = set(changes) - self.DEVICE_METADATA
        if unknown:
            raise ValueError(f"not device metadata: {', '.join(sorted(unknown))}")
        async with self.session.begin() as db:
            device = await db.get(DeviceRow, device_id)
            if device is None:
                return None
            for column, value in changes.items():
                setattr(device, column, value)
        return device

    async def device_status(self, device_id: str, status: str) -> None:
        async with self.session.begin() as db:
            device = await db.get(DeviceRow, device_id)
            if device is not None:
                device.status = status

    async def get_agent(self, agent_id: str) -> AgentRow | None:
        async with self.session() as db:
            return await db.get(AgentRow, agent_id)

    async def list_agents(self) -> list[AgentRow]:
        async with self.session() as db:
            return list((await db.scalars(select(AgentRow).order_by(AgentRow.agent_id))).all())

    async def get_device(self, device_id: str) -> DeviceRow | None:
        async with self.session() as db:
            return await db.get(DeviceRow, device_id)

    async def list_devices(self) -> list[DeviceRow]:
        async with self.session() as db:
            return list((await db.scalars(select(DeviceRow).order_by(DeviceRow.device_id))).all())

    async def page_devices(
        self, filters: DeviceFilter, limit: int, offset: int = 0
    ) -> tuple[list[DeviceRow], int]:
        """One page of the devices ``filters`` select, ordered by site, pole, mount position
        and id, and how many it selects in all (filtered and counted in the database)."""
        query = select(DeviceRow)
        if filters.site is not None:
            query = query.where(DeviceRow.site == filters.site)
        if filters.profile:
            query = query.where(DeviceRow.profile == filters.profile)
        if filters.status:
            query = query.where(DeviceRow.status == filters.status)
        if filters.search:
            query = query.where(DeviceRow.device_id.contains(filters.search, autoescape=True))
        query = query.where(*_tagged(filters.tags))
        async with self.session() as db:
            total = await db.scalar(select(func.count()).select_from(query.subquery()))
            rows = await db.scalars(
                query.order_by(
                    DeviceRow.site, DeviceRow.pole, DeviceRow.mount_position, DeviceRow.device_id
                )
                .offset(offset)
                .limit(limit)
            )
            return list(rows.all()), total or 0

    async def page_agents(
        self, site: str | None, limit: int, offset: int = 0
    ) -> tuple[list[AgentRow], int]:
        """One page of the agents (with ``site``: those with a device there), by id, and how
        many there are in all (in the database)."""
        query = select(AgentRow)
        if site is not None:
            query = query.where(
                select(DeviceRow.device_id)
                .where(DeviceRow.agent_id == AgentRow.agent_id, DeviceRow.site == site)
                .exists()
            )
        async with self.session() as db:
            total = await db.scalar(select(func.count()).select_from(query.subquery()))
            rows = await db.scalars(query.order_by(AgentRow.agent_id).offset(offset).limit(limit))
            return list(rows.all()), total or 0

    async def devices_by_id(self) -> dict[str, DeviceRow]:
        return {d.device_id: d for d in await self.list_devices()}

    async def touch_devices(
        self, last_seen_ms: dict[str, int], collected: dict[str, dict[int, int]] | None = None
    ) -> None:
        """Record when each device was last read (edge time), never moving backwards, and
        how many of its readings were stored per collection window (``collected``: device ->
        window index (edge time // :data:`~cloud_hub.registry.models.COLLECTION_WINDOW_MS`) -> readings)."""
        ids = set(last_seen_ms) | set(collected or ())
        async with self.session.begin() as db:
            query = select(DeviceRow).where(DeviceRow.device_id.in_(list(ids)))
            for device in await db.scalars(query):
                seen_ms = last_seen_ms.get(device.device_id)
                if seen_ms is not None:
                    seen = datetime.fromtimestamp(seen_ms / 1000, UTC)
                    if device.last_seen is None or _aware(device.last_seen) < seen:
                        device.last_seen = seen
                for window, count in sorted((collected or {}).get(device.device_id, {}).items()):
                    _count_collected(device, window, count)

    # -- commands ---------------------------------------------------------------------------

    async def add_command(self, row: CommandRow) -> None:
        async with self.session.begin() as db:
            db.add(row)

    async def get_command(self, command_id: str) -> CommandRow | None:
        async with self.session() as db:
            return await db.get(CommandRow, command_id)

    async def update_command(self, command_id: str, status: str, detail: str) -> CommandRow | None:
        """Move a command forward; terminal states and backward moves are ignored.

        One conditional UPDATE (compare and set), so concurrent updates (a PUBACK's ``sent``
        racing the agent's result) can never move a command backwards, whatever the database.
        """
        if status in _PROGRESS:
            allowed = [s for s, rank in _PROGRESS.items() if rank < _PROGRESS[status]]
        else:
            allowed = list(_PROGRESS)
        row, _ = await self._move(command_id, allowed, status, detail)
        return row

    async def cancel_command(self, command_id: str, detail: str) -> tuple[CommandRow | None, bool]:
        """Cancel a command that has no final status yet: (the command or None, cancelled now)."""
        return await self._move(command_id, list(_PROGRESS), "cancelled", detail)

    async def cancel_group(self, group_id: str, detail: str) -> list[CommandRow]:
        """Cancel every command of a group that has no final status yet, in one statement;
        the commands cancelled now (one that finished meanwhile keeps its status)."""
        now = utcnow()
        async with self.session.begin() as db:
            await db.execute(
                update(CommandRow)
                .where(CommandRow.group_id == group_id, CommandRow.status.in_(list(_PROGRESS)))
                .values(status="cancelled", detail=detail, updated_at=now)
            )
            rows = await db.scalars(
                select(CommandRow).where(
                    CommandRow.group_id == group_id,
                    CommandRow.status == "cancelled",
                    CommandRow.updated_at == now,
                )
            )
            return list(rows.all())

    async def _move(
        self, command_id: str, allowed: Sequence[str], status: str, detail: str
    ) -> tuple[CommandRow | None, bool]:
        """Set ``status`` if the command is in one of ``allowed``: (the command, moved)."""
        async with self.session.begin() as db:
            result: CursorResult[Any] = await db.execute(  # type: ignore[assignment]  # DML gives a CursorResult
                update(CommandRow)
                .where(CommandRow.command_id == command_id, CommandRow.status.in_(allowed))
                .values(status=status, detail=detail, updated_at=utcnow())
            )
            row = await db.get(CommandRow, command_id, populate_existing=True)
            return row, result.rowcount == 1

    async def select_devices(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        site: str | None = None,
        profile: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> list[DeviceRow]:
        """The devices matching every given criterion."""
        query = select(DeviceRow).order_by(DeviceRow.device_id)
        if device_ids is not None:
            query = query.where(DeviceRow.device_id.in_(list(device_ids)))
        if site is not None:
            query = query.where(DeviceRow.site == site)
        if profile is not None:
            query = query.where(DeviceRow.profile == profile)
        query = query.where(*_tagged(tags or {}))
        async with self.session() as db:
            return list((await db.scalars(query)).all())

    async def add_group(self, group: CommandGroupRow, commands: Sequence[CommandRow]) -> None:
        async with self.session.begin() as db:
            db.add(group)
            db.add_all(commands)

    async def get_group(self, group_id: str) -> tuple[CommandGroupRow, dict[str, int]] | None:
        """A group and the count of its commands by status."""
        async with self.session() as db:
            group = await db.get(CommandGroupRow, group_id)
            if group is None:
                return None
            counts = await db.execute(
                select(CommandRow.status, func.count())
                .where(CommandRow.group_id == group_id)
                .group_by(CommandRow.status)
            )
            return group, {status: count for status, count in counts}  # noqa: C416 - Rows

    async def page_groups(
        self, site: str | None, limit: int, offset: int = 0
    ) -> tuple[list[tuple[CommandGroupRow, dict[str, int]]], int]:
        """One page of the command groups, newest first (with ``site``: those whose selector
        is confined to that site), each with the count of its commands by status, and how
        many there are in all. Three queries whatever the page: the total, the page, and one
        GROUP BY over the commands of the page's groups."""
        query = select(CommandGroupRow)
        if site is not None:
            query = query.where(CommandGroupRow.selector["site"].as_string() == site)
        async with self.session() as db:
            total = await db.scalar(select(func.count()).select_from(query.subquery()))
            groups = list(
                (
                    await db.scalars(
                        query.order_by(
                            CommandGroupRow.created_at.desc(), CommandGroupRow.group_id.desc()
                        )
                        .offset(offset)
                        .limit(limit)
                    )
                ).all()
            )
            counts: dict[str, dict[str, int]] = {g.group_id: {} for g in groups}
            if groups:
                rows = await db.execute(
                    select(CommandRow.group_id, CommandRow.status, func.count())
                    .where(CommandRow.group_id.in_(list(counts)))
                    .group_by(CommandRow.group_id, CommandRow.status)
                )
                for group_id, status, count in rows:
                    if group_id is not None:  # (the query says so; the column is nullable)
                        counts[group_id][status] = count
            return [(g, counts[g.group_id]) for g in groups], total or 0

    async def pending_commands(self) -> list[CommandRow]:
        async with self.session() as db:
            query = select(CommandRow).where(CommandRow.status.in_(("queued",)))
            return list((await db.scalars(query.order_by(CommandRow.created_at))).all())

    async def expire_commands(self, now_ms: int) -> list[CommandRow]:
        """Queued commands past their expiry become ``expired`` (never sent); sent or
        delivered ones with no final result ``RESULT_GRACE_MS`` after expiry (an agent never
        starts an expired command, but one started just before may still report) become
        ``timed_out``."""
        changed: list[CommandRow] = []
        async with self.session.begin() as db:
            query = select(CommandRow).where(
                or_(
                    (CommandRow.status == "queued") & (CommandRow.expires_at_ms <= now_ms),
                    CommandRow.status.in_(("sent", "delivered"))
                    & (CommandRow.expires_at_ms <= now_ms - RESULT_GRACE_MS),
                )
            )
            candidates = list(await db.scalars(query))
        for row in candidates:
            if row.status == "queued":
                moved, done = await self._move(
                    row.command_id, ["queued"], "expired", "expired before it reached the agent"
                )
            else:
                moved, done = await self._move(
                    row.command_id,
                    ["sent", "delivered"],
                    "timed_out",
                    "no result from the agent before expiry",
                )
            if moved is not None and done:
                changed.append(moved)
        return changed

    # -- remote configuration ---------------------------------------------------------------

    async def set_desired_config(self, agent_id: str, config: dict[str, Any]) -> AgentConfigRow:
        """Store a new desired configuration with the next version number."""
        async with self.session.begin() as db:
            row = await db.get(AgentConfigRow, agent_id, with_for_update=True)
            if row is None:
                row = AgentConfigRow(agent_id=agent_id, version=0)
                db.add(row)
            row.version += 1
            row.desired, row.desired_at = config, utcnow()
            return row

    async def get_config(self, agent_id: str) -> AgentConfigRow | None:
        async with self.session() as db:
            return await db.get(AgentConfigRow, agent_id)

    async def unconfirmed_configs(self) -> list[AgentConfigRow]:
        async with self.session() as db:
            query = select(AgentConfigRow).where(
                or_(
                    AgentConfigRow.reported_version.is_(None),
                    AgentConfigRow.reported_version < AgentConfigRow.version,
                )
            )
            return list((await db.scalars(query)).all())

    async def config_reported(self, agent_id: str, version: int, status: str, detail: str) -> None:
        async with self.session.begin() as db:
            row = await db.get(AgentConfigRow, agent_id, with_for_update=True)
            if row is None or (row.reported_version or 0) > version:
                return
            row.reported_version, row.reported_status = version, status
            row.reported_detail, row.reported_at = detail, utcnow()

    # -- API keys ---------------------------------------------------------------------------

    async def add_api_key(self, row: ApiKeyRow) -> None:
        async with self.session.begin() as db:
            db.add(row)

    async def api_key_by_hash(self, key_hash: str) -> ApiKeyRow | None:
        async with self.session() as db:
            row = await db.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))
            return row if row is not None and row.revoked_at is None else None

    async def list_api_keys(self) -> list[ApiKeyRow]:
        async with self.session() as db:
            return list((await db.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))).all())

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self.session.begin() as db:
            row = await db.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = utcnow()
            return True

    @staticmethod
    def command_row(**fields: Any) -> CommandRow:
        now = utcnow()
        return CommandRow(created_at=now, updated_at=now, detail="", **fields)
