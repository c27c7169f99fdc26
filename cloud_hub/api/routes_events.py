"""``GET /api/v1/events/stream``: hub events as server-sent events (``text/event-stream``).

Each event is one SSE message::

    event: alarm                   the kind: telemetry, status, alarm or command
    id: 42                         increases by one per message on this connection
    data: {"kind": "alarm", "ts_ms": ..., "device_id": ..., "agent_id": ..., "data": {...}}

A ``: keepalive`` comment is sent when nothing else was for ``heartbeat_s`` seconds, so proxies
keep the connection open and clients notice a dead one. A client too slow to keep up loses
the oldest waiting events; the stream then says how many in a ``: dropped <n>`` comment. There
is no replay: ids number this connection's messages, and a reconnecting client starts afresh.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, get_args

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from cloud_hub.api.auth import require
from cloud_hub.events import EventBus, EventKind, HubEvent

__all__ = ["HEARTBEAT_S", "STREAM_QUEUE", "format_event", "router"]

#: default seconds between keepalive comments on an idle stream
HEARTBEAT_S = 15.0
#: events waiting per stream before the oldest are dropped
STREAM_QUEUE = 1000
#: most events sent in one write when many are waiting
MAX_BATCH = 100
KINDS: tuple[str, ...] = get_args(EventKind)

router = APIRouter(prefix="/api/v1/events", tags=["events"])


def format_event(event: HubEvent, event_id: int) -> str:
    """One SSE message (``data`` is one line of JSON, so it needs no splitting)."""
    document = {
        "kind": event.kind,
        "ts_ms": event.ts_ms,
        "device_id": event.device_id,
        "agent_id": event.agent_id,
        "data": event.data,
    }
    data = json.dumps(document, separators=(",", ":"), default=str)
    return f"event: {event.kind}\nid: {event_id}\ndata: {data}\n\n"


def _kinds(given: str | None) -> frozenset[str]:
    if not given:
        return frozenset()
    chosen = {part.strip() for part in given.split(",") if part.strip()}
    unknown = sorted(chosen - set(KINDS))
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"kinds: unknown {', '.join(unknown)} (one or more of {', '.join(KINDS)}, comma-separated)",
        )
    return frozenset(chosen)


@router.get(
    "/stream",
    dependencies=[Depends(require("events"))],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "An endless stream"}},
)
async def stream_events(
    request: Request,
    kinds: Annotated[
        str | None,
        Query(description="telemetry, status, alarm, command; comma-separated (default: all)"),
    ] = None,
    device_id: str | None = None,
    agent_id: str | None = None,
    heartbeat_s: Annotated[
        float, Query(ge=1, le=300, description="Seconds of silence before a keepalive comment.")
    ] = HEARTBEAT_S,
) -> StreamingResponse:
    """Hub events as they happen, filtered by kind, device and agent."""
    wanted = _kinds(kinds)
    bus: EventBus = request.app.state.hub.events

    def accepts(event: HubEvent) -> bool:
        return (
            (not wanted or event.kind in wanted)
            and (device_id is None or event.device_id == device_id)
            and (agent_id is None or event.agent_id == agent_id)
        )

    async def messages() -> AsyncIterator[str]:
        # subscribed here, not in the handler: the subscription exists exactly as long as the
        # response streams, and goes when the client disconnects (Starlette cancels us)
        subscription = bus.subscribe(accepts, STREAM_QUEUE)
        try:
            yield "retry: 3000\n\n"  # also sends the headers at once
            queue = subscription.queue
            event_id, reported = 0, 0
            while True:
                waiting: list[HubEvent] = []
                if queue.empty():
                    try:
                        async with asyncio.timeout(heartbeat_s):
                            waiting.append(await queue.get())
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                # whatever else is waiting goes out in the same write
                while not queue.empty() and len(waiting) < MAX_BATCH:
                    waiting.append(queue.get_nowait())
                chunk: list[str] = []
                if subscription.dropped > reported:
                    chunk.append(f": dropped {subscription.dropped - reported}\n\n")
                    reported = subscription.dropped
                for event in waiting:
                    event_id += 1
                    chunk.append(format_event(event, event_id))
                yield "".join(chunk)
        finally:
            bus.unsubscribe(subscription)

    return StreamingResponse(
        messages(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
