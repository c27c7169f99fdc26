"""The device page: latest values (shown with the profile's units, precision and labels), live
over a server-sent stream, the profile's commands as forms, their lifecycle, open alarms.

A command form is generated from the profile (a number field with its range for ``int`` and
``float`` parameters, a list for choices, yes/no for ``bool``); the values are checked by the
profile again in :meth:`~cloud_hub.hub.Hub.send_command`, as for the API, and the command is
audit-logged as the person. ``/devices/{id}/live`` streams the device's telemetry and
command events to the page (``console.js``), with the person's cookie; without JavaScript a
reload shows the same.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from sqlalchemy import select

from cloud_hub.api.routes import send_command as api_send_command
from cloud_hub.api.schemas import CommandCreate
from cloud_hub.api.scope import device_in_scope
from cloud_hub.console.auth import Forbidden, Person, Posted, Viewer, hub_of
from cloud_hub.console.rendering import render
from cloud_hub.console.texts import translator
from cloud_hub.events.bus import HubEvent
from cloud_hub.hub import Hub, UnknownDevice
from cloud_hub.registry import CommandRow
from cloud_hub.storage import SeriesQuery, typed_value
from device_profiles import CommandRejected, DeviceProfile
from device_profiles.commands import Command, CommandParam
from device_profiles.display import show_values

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
#: seconds between comments that keep a quiet stream (and its proxies) open
HEARTBEAT_S = 15.0
COMMAND_STATES = (
    "queued", "sent", "delivered", "succeeded", "failed", "rejected", "expired", "cancelled"
)  # fmt: skip


async def _device(request: Request, person: Viewer, device_id: str) -> tuple[Any, DeviceProfile]:
    hub = hub_of(request)
    device = await device_in_scope(hub, person.principal, device_id)  # 404 outside the site
    _, profile = await hub.profile_for(device_id)
    return device, profile


def _field(name: str, param: CommandParam) -> dict[str, Any]:
    """How a form shows one parameter."""
    if param.choices is not None:
        kind = "select"
    elif param.type == "bool":
        kind = "bool"
    elif param.type in ("int", "float"):
        kind = "number"
    else:
        kind = "text"
    return {
        "name": name,
        "kind": kind,
        "param": param,
        "step": "1" if param.type == "int" else "any",
    }


def _forms(profile: DeviceProfile) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "command": command,
            "fields": [_field(n, p) for n, p in command.params.items()],
        }
        for name, command in profile.commands.items()
    ]


def _params(command: Command, form: dict[str, str]) -> dict[str, object]:
    """The form's values typed as the profile says (CommandRejected naming a bad one)."""
    params: dict[str, object] = {}
    for name, param in command.params.items():
        raw = form.get(name, "").strip()
        if param.type == "bool":
            params[name] = raw in ("true", "on", "1")
            continue
        if raw == "":
            raise CommandRejected(f"parameter '{name}' is missing")
        try:
            params[name] = (
                int(raw) if param.type == "int" else float(raw) if param.type == "float" else raw
            )
        except ValueError:
            raise CommandRejected(f"parameter '{name}' must be {param.type}, got {raw!r}") from None
    return params


async def _recent_commands(hub: Hub, device_id: str) -> list[CommandRow]:
    async with hub.registry.session() as db:
        return list(
            (
                await db.scalars(
                    select(CommandRow)
                    .where(CommandRow.device_id == device_id)
                    .order_by(CommandRow.created_at.desc())
                    .limit(10)
                )
            ).all()
        )


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(request: Request, device_id: str, person: Person) -> Response:
    hub = hub_of(request)
    try:
        device, profile = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return render(request, "error.html", person, status_code=404, message="not_found")
    latest = await hub.store.latest(device_id, profile.name, list(profile.points))
    shown = show_values(
        profile, {name: typed_value(profile.points[name], v.value) for name, v in latest.items()}
    )
    read_at = max((v.ts_ms for v in latest.values()), default=None)
    alarms = await hub.alarms.store.page(
        states=("active", "acknowledged"), device_id=device_id, limit=20
    )
    return render(
        request,
        "device.html",
        person,
        active="devices",
        device=device,
        profile=profile,
        shown=shown,
        read_at_ms=read_at,
        forms=_forms(profile) if person.may("command") else [],
        commands=await _recent_commands(hub, device_id),
        alarms=alarms.items,
        error=request.query_params.get("error"),
        command_labels={s: translator(person.language)(s) for s in COMMAND_STATES},
        chart_points=[(n, p.description or n) for n, p in profile.points.items() if p.is_numeric],
        chart_hours=HISTORY_HOURS,
    )


@router.post("/devices/{device_id}/commands/{name}")
async def send_command(request: Request, device_id: str, name: str, person: Posted) -> Response:
    if not person.may("command"):
        raise Forbidden
    try:
        _, profile = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return render(request, "error.html", person, status_code=404, message="not_found")
    command = profile.commands.get(name)
    if command is None:
        return render(request, "error.html", person, status_code=404, message="not_found")
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:  # the API's own route: the profile's checks, the command's life cycle, the audit
        body = CommandCreate(name=name, params=_params(command, form))
        row = await api_send_command(device_id, body, hub_of(request), person.principal, request)
    except CommandRejected as exc:
        return RedirectResponse(f"/devices/{device_id}?error={quote(str(exc))}", status_code=303)
    return RedirectResponse(f"/devices/{device_id}#command-{row.command_id}", status_code=303)


#: the ranges the history chart offers, in hours, and the points it draws per series at most
HISTORY_HOURS = (1, 6, 24, 168)
HISTORY_POINTS = 300


@router.get("/devices/{device_id}/history.json")
async def history(
    request: Request,
    device_id: str,
    person: Person,
    point: str,
    hours: Annotated[int, Query(ge=1, le=168)] = 24,
) -> Response:
    """One point's values over the last ``hours``, averaged per window (about 300 windows;
    booleans as their maximum), for the chart: ``{"times": [s], "values": [...]}``."""
    try:
        _, profile = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return JSONResponse({"detail": "not found"}, status_code=404)
    spec = profile.points.get(point)
    if spec is None or not (spec.is_numeric or spec.type == "bool"):
        return JSONResponse({"detail": f"no numeric point {point!r}"}, status_code=422)
    end_ms = int(time.time() * 1000)
    window_ms = max(1000, hours * 3_600_000 // HISTORY_POINTS)
    query = SeriesQuery(
        profile=profile.name,
        device_ids=(device_id,),
        points=(point,),
        start_ms=end_ms - hours * 3_600_000,
        end_ms=end_ms,
        window_ms=window_ms,
        aggregate="max" if spec.type == "bool" else "mean",
        limit=HISTORY_POINTS + 2,
    )
    series = await hub_of(request).store.query(query)
    values = series[0].values if series else []
    return JSONResponse(
        {
            "point": point,
            "label": spec.description or point,
            "unit": spec.unit,
            "start": (end_ms - hours * 3_600_000) / 1000,
            "end": end_ms / 1000,
            "times": [t / 1000 for t, _ in values],
            "values": [None if v is None else float(v) for _, v in values],
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/devices/{device_id}/live")
async def live(request: Request, device_id: str, person: Person) -> Response:
    """The device's telemetry (values as the page shows them) and command events, as SSE."""
    try:
        _, profile = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return Response(status_code=404)
    hub = hub_of(request)
    subscription = hub.events.subscribe(
        lambda e: e.device_id == device_id and e.kind in ("telemetry", "command"), 100
    )

    def message(event: HubEvent) -> str:
        data: dict[str, Any] = {"ts_ms": event.ts_ms}
        if event.kind == "telemetry":
            values = event.data.get("values") or {}
            data["values"] = {
                v.name: {"text": v.text, "label": v.label} for v in show_values(profile, values)
            }
        else:
            data.update({k: event.data.get(k) for k in ("command_id", "name", "status", "detail")})
        return f"event: {event.kind}\ndata: {json.dumps(data, default=str)}\n\n"

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            # subscribed first, then the values and the commands' states now: a change made
            # while the page loaded is not missed (a value sent twice is harmless)
            latest = await hub.store.latest(device_id, profile.name, list(profile.points))
            if latest:
                yield message(
                    HubEvent(
                        kind="telemetry",
                        ts_ms=max(v.ts_ms for v in latest.values()),
                        device_id=device_id,
                        data={
                            "values": {
                                name: typed_value(profile.points[name], v.value)
                                for name, v in latest.items()
                            }
                        },
                    )
                )
            for row in await _recent_commands(hub, device_id):
                yield message(
                    HubEvent(
                        kind="command",
                        ts_ms=0,
                        device_id=device_id,
                        data={
                            "command_id": row.command_id,
                            "name": row.name,
                            "status": row.status,
                            "detail": row.detail,
                        },
                    )
                )
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_S):
                        event = await subscription.queue.get()
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                yield message(event)
        finally:
            hub.events.unsubscribe(subscription)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
