"""Replaying a dead letter: its message run through ingest again, as if it had just arrived.

For after an operator fixed the cause (registered the device, corrected its profile). The
message goes through :meth:`Ingest.handle` and its readings through the hub's writer, exactly as
live ones: a replay is answered once they are stored, and storage is idempotent (a reading is
stored under its device and read time), so the readings of a batch that were stored the first
time are not duplicated. When something is refused again, the dead letter stays with the new
reason and no new dead letter is made (replays never pile up); when nothing is, it is deleted
together with the other dead letters the same message left (one per refused reading).

Errors (beside :class:`~cloud_hub.dead_letters.store.DeadLetterNotFound`)::

    DeadLetterError
    ├── NotReplayable      its payload was truncated, or its source is no contract topic
    └── ReplayTimeout      its readings were not stored in time (they stay queued)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from cloud_hub.dead_letters.store import DeadLetterError, DeadLetterNotFound
from cloud_hub.hub import Hub
from cloud_hub.ingest.writer import Pending
from cloud_hub.storage import StoredReading
from device_profiles.wire import WireError, parse_topic

__all__ = ["NotReplayable", "ReplayResult", "ReplayTimeout", "replay"]

log = structlog.get_logger(__name__)


class NotReplayable(DeadLetterError):
    def __init__(self, dead_letter_id: int, reason: str) -> None:
        super().__init__(f"dead letter {dead_letter_id} cannot be replayed: {reason}")
        self.dead_letter_id = dead_letter_id
        self.reason = reason


class ReplayTimeout(DeadLetterError):
    pass


@dataclass(frozen=True)
class ReplayResult:
    accepted: bool
    #: readings the store took (again: storage is idempotent)
    readings_stored: int
    #: why what was refused again was refused (each is a new dead letter)
    reasons: list[str]
    #: the replayed dead letter was deleted (only when accepted)
    deleted: bool
    #: the other dead letters of the same message deleted with it
    siblings_deleted: int = 0


async def replay(hub: Hub, dead_letter_id: int) -> ReplayResult:
    """Run a dead letter's message through ingest and the writer again."""
    row = await hub.dead_letters.get(dead_letter_id)
    if row is None:
        raise DeadLetterNotFound(dead_letter_id)
    if row.payload_size > len(row.payload):
        raise NotReplayable(
            dead_letter_id,
            f"only {len(row.payload)} of its {row.payload_size} payload bytes were kept",
        )
    try:
        parse_topic(row.source)
    except WireError as exc:
        raise NotReplayable(
            dead_letter_id, f"its source {row.source!r} is not a message topic ({exc})"
        ) from exc
    ingest = hub.ingest
    stored = 0
    with ingest.refusals(record_only=True) as refused:
        try:
            accepted = await ingest.handle(row.source, row.payload)
        except Exception as exc:  # as the MQTT sessions do: dead-lettered, never raised
            log.exception("replayed message failed", dead_letter_id=dead_letter_id)
            ingest.dead_letter(row.source, f"hub error: {exc!r}", row.payload)
        else:
            if accepted.readings:
                ingest.watch_store(refused, accepted.readings)
                await _store(hub, accepted.readings)
                stored = len(accepted.readings) - refused.store_refused
            if accepted.command_result is not None:
                await hub._apply_result(accepted.command_result)  # the hub's own path
    ok = not refused.reasons
    deleted = 0
    if ok:  # this one and the others the same message left (one per refused reading)
        deleted = await hub.dead_letters.delete_message(row)
    else:  # kept, with why it is refused now (no new dead letters: replays never pile up)
        await hub.dead_letters.set_reason(dead_letter_id, "; ".join(refused.reasons)[:4000])
    result = ReplayResult(ok, stored, list(refused.reasons), deleted > 0, max(0, deleted - 1))
    log.info(
        "dead letter replayed",
        dead_letter_id=dead_letter_id,
        accepted=ok,
        readings_stored=result.readings_stored,
        reasons=refused.reasons[:5],
    )
    return result


async def _store(hub: Hub, readings: list[StoredReading]) -> None:
    """Hand readings to the writer and wait until it has written (or refused) them."""
    loop = asyncio.get_running_loop()
    written: asyncio.Future[None] = loop.create_future()

    def ack() -> None:
        if not written.done():
            written.set_result(None)

    timeout_s = hub.settings.dead_letters.replay_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await hub.writer.submit(Pending(readings, ack))
            await asyncio.shield(written)
    except TimeoutError as exc:
        raise ReplayTimeout(
            f"readings not stored within {timeout_s} s; they stay queued and are stored when "
            "the telemetry store allows"
        ) from exc
