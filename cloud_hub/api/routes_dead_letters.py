"""Routes under /api/v1/dead-letters (admin): what the hub refused, read, replayed, deleted."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from cloud_hub.api.audit import audit
from cloud_hub.api.deps import Admin, HubDep
from cloud_hub.api.problems import problem, problem_responses
from cloud_hub.api.schemas import QueryTime, UtcDateTime
from cloud_hub.api.scope import current_sites, dead_letter_in_scope, scoped_page, sees_object
from cloud_hub.dead_letters.models import DEAD_LETTER_PAYLOAD_MAX, DeadLetterRow
from cloud_hub.dead_letters.replay import NotReplayable, ReplayTimeout, replay
from cloud_hub.dead_letters.store import DeadLetterNotFound, InvalidCursor
from device_profiles.wire import ID_PATTERN

__all__ = ["DeadLetterList", "DeadLetterOut", "ReplayOut", "router"]

#: bytes of a payload shown as text (all kept bytes are in ``payload_base64``)
PAYLOAD_TEXT_MAX = 1024

_ERRORS = problem_responses(
    401,
    403,
    422,
    s401="No API key, or an unknown or revoked one",
    s403="Only admin keys may read dead letters",
)
_NOT_FOUND = problem_responses(404, s404="No such dead letter (never, or deleted or pruned)")
router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"], responses=_ERRORS)

DeadLetterId = Annotated[int, Path(ge=1, lt=2**63, description="The dead letter's id.")]

_EXAMPLE: JsonDict = {
    "id": 4711,
    "received_at": "2026-12-01T19:45:12.345000Z",
    "source": "iot/v1/cabinet-07/telemetry",
    "topic": "iot/v1/cabinet-07/telemetry",
    "agent_id": "cabinet-07",
    "reason": "seq 18 reading 0: device 'pole-0031' is not registered to agent 'cabinet-07'",
    "payload": '{"v":1,"agent_id":"cabinet-07","seq":18,"readings":[...]}',
    "payload_base64": "eyJ2IjoxLCJhZ2VudF9pZCI6ImNhYmluZXQtMDciLCJzZXEiOjE4LCJyZWFkaW5ncyI6Wy4uLl19",
    "payload_size": 57,
    "truncated": False,
}


class DeadLetterOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    id: int = Field(description="Increasing: a newer dead letter has a higher id.")
    received_at: UtcDateTime = Field(description="When the hub refused it (UTC).")
    source: str = Field(
        description="Where it came from: the MQTT topic, `coap:/<path>` (refused before the "
        "agent was authenticated) or `store:<device_id>` (refused by the telemetry store)."
    )
    topic: str = Field(description="The same as `source` (kept for older clients).")
    agent_id: str | None = Field(description="The agent it came from, when known.")
    reason: str = Field(description="Why it was refused.")
    payload: str = Field(
        description=f"The first {PAYLOAD_TEXT_MAX:,} bytes of the payload as UTF-8 (lossy)."
    )
    payload_base64: str = Field(
        description=f"Every kept byte of the payload (at most {DEAD_LETTER_PAYLOAD_MAX:,}), base64."
    )
    payload_size: int = Field(description="Bytes received.")
    truncated: bool = Field(
        description=f"Only the first {DEAD_LETTER_PAYLOAD_MAX:,} bytes were kept: it cannot be "
        "replayed."
    )

    @classmethod
    def of(cls, row: DeadLetterRow) -> DeadLetterOut:
        return cls(
            id=row.id,
            received_at=row.received_at,
            source=row.source,
            topic=row.source,
            agent_id=row.agent_id,
            reason=row.reason,
            payload=row.payload[:PAYLOAD_TEXT_MAX].decode("utf-8", "replace"),
            payload_base64=base64.b64encode(row.payload).decode(),
            payload_size=row.payload_size,
            truncated=row.payload_size > len(row.payload),
        )


class DeadLetterList(BaseModel):
    items: list[DeadLetterOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class ReplayOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "outcome": "accepted",
                    "readings_stored": 12,
                    "reasons": [],
                    "deleted": True,
                    "siblings_deleted": 1,
                },
                {
                    "outcome": "refused",
                    "readings_stored": 11,
                    "reasons": ["seq 18 reading 3: point 'power' expects a uint32 value, got 'x'"],
                    "deleted": False,
                },
            ]
        }
    )

    outcome: Literal["accepted", "refused"] = Field(
        description="accepted: nothing was refused (the dead letter is deleted, with the "
        "others of the same message); refused: something was refused again (this dead letter "
        "is kept with the new reason; no new dead letter is made)."
    )
    readings_stored: int = Field(
        description="Readings the store took (storage is idempotent: readings of the message "
        "stored before are not duplicated)."
    )
    reasons: list[str] = Field(description="Why what was refused again was refused.")
    deleted: bool = Field(description="The replayed dead letter was deleted.")
    siblings_deleted: int = Field(
        default=0,
        description="Other dead letters of the same message (one per refused reading) "
        "deleted with it.",
    )


def _as_utc(value: datetime | None) -> datetime | None:
    """In UTC; the first or last time there is where UTC has none such (year 1 or 9999)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00, 9999-12-31T23:59:59-01:00
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


@router.get("")
async def list_dead_letters(
    hub: HubDep,
    caller: Admin,
    agent_id: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="Only those of this agent.")
    ] = None,
    since: Annotated[
        QueryTime | None,
        Query(description="Only those received at or after this time (RFC 3339)."),
    ] = None,
    until: Annotated[
        QueryTime | None,
        Query(description="Only those received before this time (RFC 3339)."),
    ] = None,
    reason_contains: Annotated[
        str | None,
        Query(max_length=200, description="Only those whose reason contains this (any case)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Items per page at most.")] = 100,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
) -> DeadLetterList:
    """Refused messages and readings, newest first, with the reason, one page at a time.

    Kept in the registry (see `dead_letters` in the hub's settings for how many and how
    long); `hub_dead_letters_total` in /metrics counts every one. A site-scoped key sees
    those of the agents of its site."""
    start, stop = _as_utc(since), _as_utc(until)
    sites = await current_sites(hub) if caller.site is not None else None

    async def fetch(n: int, after: str | None) -> tuple[list[DeadLetterRow], str | None]:
        found = await hub.dead_letters.page(
            agent_id=agent_id,
            since=start,
            until=stop,
            reason_contains=reason_contains,
            limit=n,
            cursor=after,
        )
        return found.items, found.next_cursor

    def visible(row: DeadLetterRow) -> bool:
        return sites is None or sees_object(caller, sites, None, row.agent_id)

    try:
        page = await scoped_page(fetch, visible, limit, cursor)
    except InvalidCursor as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return DeadLetterList(
        items=[DeadLetterOut.of(row) for row in page.items], next_cursor=page.next_cursor
    )


@router.get("/{dead_letter_id}", responses=_NOT_FOUND)
async def get_dead_letter(
    dead_letter_id: DeadLetterId, hub: HubDep, caller: Admin
) -> DeadLetterOut:
    await dead_letter_in_scope(hub, caller, dead_letter_id)
    row = await hub.dead_letters.get(dead_letter_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
    return DeadLetterOut.of(row)


@router.post(
    "/{dead_letter_id}/replay",
    response_model=ReplayOut,
    responses={
        **_NOT_FOUND,
        **problem_responses(
            409,
            503,
            s409="Not replayable: its payload was truncated, or it is no message (its source "
            "is not an MQTT topic)",
            s503="Its readings were not stored in time; they stay queued",
        ),
    },
)
async def replay_dead_letter(
    dead_letter_id: DeadLetterId, hub: HubDep, caller: Admin, request: Request
) -> ReplayOut | Response:
    """Run a refused message through ingest again, e.g. after its device was registered or
    its profile fixed: its readings are stored as live ones (answered once stored). If
    nothing is refused this time the dead letter is deleted; what is refused again becomes a
    new dead letter and this one is kept."""
    target = f"dead_letter:{dead_letter_id}"
    await dead_letter_in_scope(hub, caller, dead_letter_id)
    try:
        result = await replay(hub, dead_letter_id)
    except DeadLetterNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except NotReplayable as exc:
        return problem(status.HTTP_409_CONFLICT, "Conflict", str(exc))
    except ReplayTimeout as exc:
        await audit(request, "dead_letter.replay", target, outcome="pending")
        return problem(status.HTTP_503_SERVICE_UNAVAILABLE, "Service Unavailable", str(exc))
    outcome: Literal["accepted", "refused"] = "accepted" if result.accepted else "refused"
    await audit(
        request,
        "dead_letter.replay",
        target,
        outcome=outcome,
        readings_stored=result.readings_stored,
        reasons=result.reasons[:10],
    )
    return ReplayOut(
        outcome=outcome,
        readings_stored=result.readings_stored,
        reasons=result.reasons,
        deleted=result.deleted,
        siblings_deleted=result.siblings_deleted,
    )


@router.delete("/{dead_letter_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_dead_letter(
    dead_letter_id: DeadLetterId, hub: HubDep, caller: Admin, request: Request
) -> Response:
    """Forget a dead letter (its cause dealt with, or not worth keeping)."""
    await dead_letter_in_scope(hub, caller, dead_letter_id)
    if not await hub.dead_letters.delete(dead_letter_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dead letter {dead_letter_id}")
    await audit(request, "dead_letter.delete", f"dead_letter:{dead_letter_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
