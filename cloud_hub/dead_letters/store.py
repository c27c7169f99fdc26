"""Dead letters kept in the registry: what the hub refused, with the reason, across restarts.

Ingest and the CoAP ingress hand every refused message or reading to :meth:`DeadLetterStore.add`,
which never blocks nor raises: it puts the dead letter on a bounded in-memory queue (when the
queue is full the newest is dropped and counted as ``unsaved``). :meth:`DeadLetterStore.run`
writes the queue in batches (every ``flush_interval_s`` or ``batch_size`` dead letters, one
INSERT statement per batch); while the database fails it retries with capped backoff and keeps
what it holds. :meth:`DeadLetterStore.close` writes what is left, for at most
``close_timeout_s``. Retention (``max_rows``, ``max_age_days``) is applied every
``prune_interval_s`` with two indexed DELETEs.

Errors::

    DeadLetterError
    ├── DeadLetterNotFound (also a LookupError)
    └── InvalidCursor (also a ValueError)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import CursorResult, delete, func, insert, select, update

from cloud_hub.dead_letters.models import DEAD_LETTER_PAYLOAD_MAX, DeadLetterRow
from cloud_hub.registry import Registry, utcnow
from device_profiles.wire import ROOT, WireError, parse_topic

__all__ = [
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterPage",
    "DeadLetterSettings",
    "DeadLetterStore",
    "InvalidCursor",
    "agent_of",
]

log = structlog.get_logger(__name__)

_SOURCE_MAX = 256  # the columns' lengths
_AGENT_MAX = 64
_REASON_MAX = 2000
_RETRY_MIN_S = 0.2
_CURSOR_PREFIX = "dl:"


class DeadLetterSettings(BaseModel):
    """How the hub keeps dead letters (refused messages and readings) in its registry."""

    model_config = ConfigDict(extra="forbid")

    queue_size: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Dead letters waiting to be written at most; beyond it the newest are "
        "dropped and counted (hub_dead_letters_unsaved_total).",
    )
    batch_size: int = Field(
        default=500, ge=1, le=5000, description="Dead letters written per INSERT at most."
    )
    flush_interval_s: float = Field(
        default=0.5, gt=0, le=60, description="Longest a dead letter waits before it is written."
    )
    retry_max_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest pause between attempts while the registry database fails.",
    )
    close_timeout_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long stopping the hub may spend writing the dead letters still queued.",
    )
    max_rows: int = Field(
        default=100_000, ge=1, le=100_000_000, description="Dead letters kept at most (newest)."
    )
    max_age_days: float = Field(
        default=30, gt=0, le=3650, description="Dead letters older than this are deleted."
    )
    prune_interval_s: float = Field(
        default=60, gt=0, le=86400, description="How often retention is applied."
    )
    replay_timeout_s: float = Field(
        default=10,
        gt=0,
        le=300,
        description="How long a replay waits for its readings to be stored before it answers "
        "503 (they stay queued and are stored when the store allows).",
    )


class DeadLetterError(Exception):
    """Base of the dead-letter errors (see the module docstring)."""


class DeadLetterNotFound(DeadLetterError, LookupError):
    def __init__(self, dead_letter_id: int) -> None:
        super().__init__(f"no dead letter {dead_letter_id}")
        self.dead_letter_id = dead_letter_id


class InvalidCursor(DeadLetterError, ValueError):
    pass


@dataclass(frozen=True)
class DeadLetterPage:
    items: list[DeadLetterRow]
    #: pass as ``cursor`` to get the next (older) page; None on the last page
    next_cursor: str | None


def agent_of(source: str) -> str | None:
    """The agent whose namespace a contract topic is in; None for other sources."""
    if not source.startswith(ROOT + "/"):
        return None
    try:
        return parse_topic(source)[0]
    except WireError:
        return None


def _clean(text: str, limit: int) -> str:
    """Storable text: valid UTF-8 (lone surrogates escaped), no NUL (PostgreSQL refuses it)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return text[:limit]


def _encode_cursor(dead_letter_id: int) -> str:
    raw = f"{_CURSOR_PREFIX}{dead_letter_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        value = int(text.removeprefix(_CURSOR_PREFIX))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(f"invalid cursor {cursor!r}") from exc
    if not text.startswith(_CURSOR_PREFIX) or not 1 <= value < 2**63:
        raise InvalidCursor(f"invalid cursor {cursor!r}")
    return value


def _utc(value: datetime) -> datetime:
    """UTC, naive taken as UTC (SQLite compares the stored UTC text)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DeadLetterStore:
    """Dead letters in the registry's ``dead_letters`` table, written in the background."""

    def __init__(
        self,
        registry: Registry,
        settings: DeadLetterSettings | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings if settings is not None else DeadLetterSettings()
        #: ``saved``, ``unsaved`` (dropped: queue full, or still queued when closed),
        #: ``write_failures`` and ``pruned``
        self.stats: Counter[str] = Counter()
        self._session = registry.session
        self._clock = clock
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time: run() and close()
        self._closed = False
        self._overflowing = False

    @property
    def queued(self) -> int:
        """Dead letters waiting to be written."""
        return len(self._queue)

    # -- taking dead letters (never blocks, never raises) ----------------------------------

    def add(self, source: str, reason: str, payload: bytes, *, agent_id: str | None = None) -> None:
        """Queue a dead letter; ``agent_id`` defaults to the one the source topic names."""
        try:
            if self._closed or len(self._queue) >= self.settings.queue_size:
                self._drop(source)
                return
            source = _clean(str(source), _SOURCE_MAX)
            data = bytes(payload)
            self._queue.append(
                {
                    "received_at": self._clock(),
                    "source": source,
                    "agent_id": _clean(agent_id, _AGENT_MAX) if agent_id else agent_of(source),
                    "reason": _clean(str(reason), _REASON_MAX),
                    "payload": data[:DEAD_LETTER_PAYLOAD_MAX],
                    "payload_size": len(data),
                }
            )
            if len(self._queue) >= self.settings.batch_size:
                self._wake.set()
        except Exception:  # a dead letter must never hurt the path that refused it
            self.stats["unsaved"] += 1
            log.exception("dead letter not kept", source=repr(source)[:100])

    def _drop(self, source: str) -> None:
        self.stats["unsaved"] += 1
        if self._closed:
            log.debug("dead letter after close, not kept", source=source)
            return
        (log.debug if self._overflowing else log.warning)(
            "dead-letter queue full, dropping the newest",
            queue_size=self.settings.queue_size,
            source=source,
        )
        self._overflowing = True

    # -- writing ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Write queued dead letters and apply retention until cancelled."""
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        failures = 0
        while True:
            if len(self._queue) < self.settings.batch_size:
                self._wake.clear()
                wait_s = min(self.settings.flush_interval_s, max(0.0, next_prune - loop.time()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wake.wait()
            while self._queue:
                # shielded: a cancelled run() lets a started INSERT finish (close() waits for
                # it through the lock), so a batch is never both committed and kept
                written = asyncio.ensure_future(self._write_batch())
                try:
                    await asyncio.shield(written)
                except asyncio.CancelledError:
                    written.add_done_callback(_retrieve)
                    raise
                except Exception as exc:  # noqa: BLE001 - the database is away or failing: keep, retry
                    failures += 1
                    self.stats["write_failures"] += 1
                    delay = min(self.settings.retry_max_s, _RETRY_MIN_S * 2 ** (failures - 1))
                    (log.warning if failures == 1 else log.debug)(
                        "dead letters not written, will retry",
                        error=repr(exc)[:500],
                        queued=len(self._queue),
                        retry_in_s=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
                    continue
                if failures:
                    log.info("dead letters written again", retries=failures)
                    failures = 0
            if loop.time() >= next_prune:
                next_prune = loop.time() + self.settings.prune_interval_s
                try:
                    await self.prune()
                except Exception as exc:  # noqa: BLE001 - retention waits for the next round
                    log.warning("dead-letter retention failed", error=repr(exc)[:500])

    async def flush(self) -> int:
        """Write everything queued now (raises what the database raises); how many."""
        written = 0
        while self._queue:
            written += await self._write_batch()
        return written

    async def _write_batch(self) -> int:
        async with self._lock:
            batch = list(itertools.islice(self._queue, self.settings.batch_size))
            if not batch:
                return 0
            async with self._session.begin() as db:
                await db.execute(insert(DeadLetterRow), batch)
            for _ in batch:  # add() only appends: the batch is still the queue's head
                self._queue.popleft()
            self.stats["saved"] += len(batch)
            self._overflowing = False  # there is room again: the next overflow is news
            return len(batch)

    async def close(self) -> None:
        """Write what is queued, for at most ``close_timeout_s``; count the rest unsaved."""
        self._closed = True
        failures = 0
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                while self._queue:
                    try:
                        await self._write_batch()
                    except Exception as exc:  # noqa: BLE001 - retried until the deadline
                        failures += 1
                        (log.warning if failures == 1 else log.debug)(
                            "dead letters not written at close, retrying", error=repr(exc)[:500]
                        )
                        await asyncio.sleep(min(1.0, _RETRY_MIN_S * 2 ** (failures - 1)))
        except TimeoutError:
            pass
        if self._queue:
            self.stats["unsaved"] += len(self._queue)
            log.error("dead letters lost at close", count=len(self._queue))
            self._queue.clear()

    # -- retention --------------------------------------------------------------------------

    async def prune(self, now: datetime | None = None) -> int:
        """Delete dead letters past ``max_age_days`` and beyond the newest ``max_rows``."""
        cutoff = (now or self._clock()) - timedelta(days=self.settings.max_age_days)
        async with self._session.begin() as db:
            old = await db.execute(
                delete(DeadLetterRow)
                .where(DeadLetterRow.received_at < _utc(cutoff))
                .execution_options(synchronize_session=False)
            )
            deleted = cast("CursorResult[Any]", old).rowcount
            newest_dropped = await db.scalar(
                select(DeadLetterRow.id)
                .order_by(DeadLetterRow.id.desc())
                .offset(self.settings.max_rows)
                .limit(1)
            )
            if newest_dropped is not None:
                extra = await db.execute(
                    delete(DeadLetterRow)
                    .where(DeadLetterRow.id <= newest_dropped)
                    .execution_options(synchronize_session=False)
                )
                deleted += cast("CursorResult[Any]", extra).rowcount
        if deleted:
            self.stats["pruned"] += deleted
            log.info("dead letters pruned", count=deleted)
        return deleted

    # -- reading ----------------------------------------------------------------------------

    async def page(
        self,
        *,
        agent_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        reason_contains: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> DeadLetterPage:
        """Dead letters, newest first, ``limit`` at a time (keyset on id); ``since`` is
        inclusive, ``until`` exclusive; ``reason_contains`` ignores case (ASCII only on SQLite)."""
        query = select(DeadLetterRow)
        if agent_id is not None:
            query = query.where(DeadLetterRow.agent_id == agent_id)
        if since is not None:
            query = query.where(DeadLetterRow.received_at >= _utc(since))
        if until is not None:
            query = query.where(DeadLetterRow.received_at < _utc(until))
        if reason_contains:
            needle = _clean(reason_contains, _REASON_MAX).lower()
            query = query.where(func.lower(DeadLetterRow.reason).contains(needle, autoescape=True))
        if cursor is not None:
            query = query.where(DeadLetterRow.id < _decode_cursor(cursor))
        query = query.order_by(DeadLetterRow.id.desc()).limit(limit + 1)
        async with self._session() as db:
            rows = list((await db.scalars(query)).all())
        more = len(rows) > limit
        rows = rows[:limit]
        return DeadLetterPage(rows, _encode_cursor(rows[-1].id) if more and rows else None)

    async def get(self, dead_letter_id: int) -> DeadLetterRow | None:
        async with self._session() as db:
            return await db.get(DeadLetterRow, dead_letter_id)

    async def delete_message(self, row: DeadLetterRow) -> int:
        """Delete every dead letter of the same message as ``row`` (a batch with several
        refused readings left one each); how many went."""
        async with self._session.begin() as db:
            result = await db.execute(
                delete(DeadLetterRow)
                .where(
                    DeadLetterRow.source == row.source,
                    DeadLetterRow.payload_size == row.payload_size,
                    DeadLetterRow.payload == row.payload,
                )
                .execution_options(synchronize_session=False)
            )
            return int(cast("CursorResult[Any]", result).rowcount or 0)

    async def set_reason(self, dead_letter_id: int, reason: str) -> None:
        """Say why the dead letter's message is refused now (after a replay)."""
        async with self._session.begin() as db:
            await db.execute(
                update(DeadLetterRow)
                .where(DeadLetterRow.id == dead_letter_id)
                .values(reason=reason)
                .execution_options(synchronize_session=False)
            )

    async def delete(self, dead_letter_id: int) -> bool:
        """Delete one dead letter; False if there was none."""
        async with self._session.begin() as db:
            result = await db.execute(
                delete(DeadLetterRow)
                .where(DeadLetterRow.id == dead_letter_id)
                .execution_options(synchronize_session=False)
            )
            return cast("CursorResult[Any]", result).rowcount == 1


def _retrieve(task: asyncio.Future[int]) -> None:
    """Fetch a background write's outcome, so an orphaned failure is not reported as unseen."""
    if not task.cancelled():
        task.exception()
