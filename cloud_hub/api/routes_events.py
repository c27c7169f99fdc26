"""``GET /api/v1/events/stream``: hub events as server-sent events (``text/event-stream``).

Each event is one SSE message::

    event: alarm                   the kind: telemetry, status, alarm or command
    id: 1042                       status, alarm and command events: their place in the log
    data: {"kind": "alarm", "ts_ms": ..., "device_id": ..., "agent_id": ..., "data": {...}}

Status, alarm and command events come from the hub's durable event log
(:mod:`cloud_hub.events.log`), which every hub process appends to: a stream served by any of
several hub processes carries all of them, in log order, and a client that reconnects with
``Last-Event-ID`` (browsers' ``EventSource`` does so by itself; or ``?last_event_id=``) gets
what it missed, for as long as the log keeps it (``event_log.retention_days``). Without it a
stream starts at the end of the log. Telemetry events (no ``id``: readings are in the store,
see ``/api/v1/telemetry``) come from the process's own event bus, so with several hub processes
a stream carries the share of the readings its process ingested; a client too slow to keep up
loses the oldest waiting readings, and the stream says how many in a ``: dropped <n>`` comment.

A key scoped to a site gets only the events of that site: of its devices, and of agents with
a device there (see :mod:`cloud_hub.sites`).

A ``: keepalive`` comment is sent when nothing else was for ``heartbeat_s`` seconds, so proxies
keep the connection open and clients notice a dead one. While the log cannot be read (the
registry is down) the stream says so in a ``: event log unavailable`` comment and goes on.
"""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.event_stream import STREAM_QUEUE, EventStream, format_event
from cloud_hub.events.bus import EventBus, EventKind
from cloud_hub.events.log import EventLog

__all__ = ["HEARTBEAT_S", "STREAM_QUEUE", "format_event", "router"]

#: default seconds between keepalive comments on an idle stream
HEARTBEAT_S = 15.0
KINDS: tuple[str, ...] = get_args(EventKind)

router = APIRouter(prefix="/api/v1/events", tags=["events"])


def _kinds(given: str | None) -> frozenset[str]:
    if not given:
        return frozenset(KINDS)
    chosen = {part.strip() for part in given.split(",") if part.strip()}
    unknown = sorted(chosen - set(KINDS))
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"kinds: unknown {', '.join(unknown)} (one or more of {', '.join(KINDS)}, comma-separated)",
        )
    return frozenset(chosen) if chosen else frozenset(KINDS)


def _resume_from(header: str | None, query: int | None) -> int | None:
    if query is not None:
        return query
    if header is None or not header.strip():
        return None
    text = header.strip()
    if not text.isdigit():
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"Last-Event-ID: {text[:40]!r} is not an id of this stream (a non-negative integer)",
        )
    return int(text)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless stream"}},
)
async def stream_events(
    request: Request,
    caller: Annotated[Principal, Depends(require("events"))],
    kinds: Annotated[
        str | None,
        Query(description="telemetry, status, alarm, command; comma-separated (default: all)"),
    ] = None,
    device_id: str | None = None,
    agent_id: str | None = None,
    heartbeat_s: Annotated[
        float, Query(ge=1, le=300, description="Seconds of silence before a keepalive comment.")
    ] = HEARTBEAT_S,
    last_event_id: Annotated[
        int | None,
        Query(ge=0, description="Resume after this id (as the Last-Event-ID header does)."),
    ] = None,
    last_event_id_header: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume after this id (sent by EventSource)."),
    ] = None,
) -> StreamingResponse:
    """Hub events as they happen, filtered by kind, device and agent; resumable."""
    wanted = _kinds(kinds)
    resume = _resume_from(last_event_id_header, last_event_id)
    bus: EventBus = request.app.state.hub.events
    event_log: EventLog = request.app.state.hub.event_log

    stream = EventStream(
        bus,
        event_log,
        wanted,
        resume,
        heartbeat_s,
        lambda e: (
            (device_id is None or e.device_id == device_id)
            and (agent_id is None or e.agent_id == agent_id)
        ),
        request.app.state.sites,
        caller.site,
    )
    return StreamingResponse(
        stream.messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
