"""The device page: its metadata (site → pole → mount position, position, tags), its latest
values (shown with the profile's units, precision and labels), live over a server-sent stream,
the profile's commands as forms, their lifecycle, open alarms, and a history chart of up to
six numeric points.

A command form is generated from the profile (a number field with its range for ``int`` and
``float`` parameters, a list for choices, yes/no for ``bool``); the values are checked by the
profile again in :meth:`~cloud_hub.hub.Hub.send_command`, as for the API, and the command is
audit-logged as the person. The metadata form (for those who may provision) is the API's
``PATCH /api/v1/devices/{id}`` (:func:`~cloud_hub.api.routes.update_device`): its checks, its
site rule and its audit entry. ``/devices/{id}/live`` streams the device's telemetry and
command events to the page (``console.js``), with the person's cookie; without JavaScript a
reload shows the same. ``/devices/{id}/history.json`` gives the chart (``chart.js``) one
series per point on shared window times, from one store query.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from pydantic import ValidationError
from sqlalchemy import select

from cloud_hub.api.routes import send_command as api_send_command
from cloud_hub.api.routes import update_device as api_update_device
from cloud_hub.api.schemas import CommandCreate, DeviceUpdate
from cloud_hub.api.scope import device_in_scope
from cloud_hub.console.auth import Forbidden, Person, Posted, Viewer, hub_of
from cloud_hub.console.rendering import render
from cloud_hub.console.texts import translator
from cloud_hub.events.bus import HubEvent
from cloud_hub.hub import Hub, UnknownDevice
from cloud_hub.registry import CommandRow, DeviceRow
from cloud_hub.storage import SeriesQuery, typed_value
from device_profiles import CommandRejected, DeviceProfile, format_location
from device_profiles.commands import Command, CommandParam
from device_profiles.display import show_values

__all__ = ["COMMAND_STATES", "command_forms", "form_params", "router"]

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


def command_forms(profile: DeviceProfile) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "command": command,
            "fields": [_field(n, p) for n, p in command.params.items()],
        }
        for name, command in profile.commands.items()
    ]


def form_params(command: Command, form: dict[str, str]) -> dict[str, object]:
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
    return await _page(request, person, device_id)


async def _page(
    request: Request,
    person: Viewer,
    device_id: str,
    status_code: int = 200,
    typed: dict[str, str] | None = None,
    metadata_error: str | None = None,
    was: dict[str, str] | None = None,
) -> Response:
    """The page; after a refused metadata form, with what was ``typed`` and why (and what
    the form showed when it was opened, ``was``)."""
    hub = hub_of(request)
    try:
        device, profile = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return render(request, "error.html", person, status_code=404, message="not_found")
    latest = await hub.store.latest(device_id, profile.name, list(profile.points))
    shown = show_values(
        profile,
        {name: typed_value(profile.points[name], v.value) for name, v in latest.items()},
        language=person.language,
    )
    read_at = max((v.ts_ms for v in latest.values()), default=None)
    alarms = await hub.alarms.store.page(
        states=("active", "acknowledged"), device_id=device_id, limit=20
    )
    t = translator(person.language)
    return render(
        request,
        "device.html",
        person,
        status_code=status_code,
        active="devices",
        device=device,
        profile=profile,
        shown=shown,
        read_at_ms=read_at,
        forms=command_forms(profile) if person.may("command") else [],
        commands=await _recent_commands(hub, device_id),
        alarms=alarms.items,
        error=request.query_params.get("error"),
        command_labels={s: t(s) for s in COMMAND_STATES},
        metadata_form=(typed or _typed(device)) if person.may("provision") else None,
        metadata_was=was or _typed(device),
        metadata_error=metadata_error,
        saved=_saved(request.query_params.get("saved"), t),
        chart_points=[
            {"name": n, "label": _label(profile.describe_point(n, person.language), p.unit)}
            for n, p in profile.points.items()
            if p.is_numeric
        ],
        chart_hours=HISTORY_HOURS,
        chart_aggregates=HISTORY_AGGREGATES,
        chart_max=MAX_CHART_POINTS,
    )


def _label(text: str, unit: str) -> str:
    return f"{text} ({unit})" if unit else text


# -- metadata -------------------------------------------------------------------------------

#: the metadata the form edits, in the page's order, and the word that names each
METADATA_LABELS = {
    "site": "site",
    "pole": "pole",
    "mount_position": "mount",
    "lat": "latitude",
    "lon": "longitude",
    "tags": "meta_tags",
}


class FormUnreadable(ValueError):
    """A field of the metadata form that is not what it should be (the tags' lines)."""


def _typed(device: DeviceRow) -> dict[str, str]:
    """The device's metadata as the form shows it."""
    return {
        "site": device.site or "",
        "pole": device.pole or "",
        "mount_position": device.mount_position or "",
        "lat": "" if device.lat is None else repr(device.lat),
        "lon": "" if device.lon is None else repr(device.lon),
        "tags": "\n".join(f"{k}={v}" for k, v in (device.tags or {}).items()),
    }


def _tags(text: str, t: Callable[[str], str]) -> dict[str, str] | None:
    """``key=value`` lines (blank ones skipped) as tags; none: no tags."""
    tags: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise FormUnreadable(t("meta_tags_line").format(line=number))
        if key in tags:
            raise FormUnreadable(t("meta_tag_twice").format(key=key))
        tags[key] = value.strip()
    return tags or None


def _coordinate(text: str) -> float | str | None:
    """A number, or the text itself for the model to refuse naming its field; empty: none."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _update(
    typed: dict[str, str],
    was: dict[str, str] | None,
    person: Viewer,
    t: Callable[[str], str],
) -> DeviceUpdate:
    """The form as the API's body: the fields the person changed from what the form showed
    when it was opened (``was``; none: every field), so two people editing different fields
    of one device at once do not undo each other; empty clears one. A position changes as a
    pair; a site-scoped person's site is not theirs to change, so it is left out."""

    def changed(*names: str) -> bool:
        return was is None or any(typed[n].strip() != was.get(n, "").strip() for n in names)

    body: dict[str, Any] = {}
    for name in ("pole", "mount_position"):
        if changed(name):
            body[name] = typed[name].strip() or None
    if changed("lat", "lon"):
        body["lat"], body["lon"] = _coordinate(typed["lat"]), _coordinate(typed["lon"])
    if changed("tags"):
        body["tags"] = _tags(typed["tags"], t)
    if person.principal.site is None and changed("site"):
        body["site"] = typed["site"].strip() or None
    return DeviceUpdate.model_validate(body)


def _problems(exc: ValidationError) -> str:
    """Pydantic's errors as the API says them (``field: message``)."""
    return "; ".join(
        f"{format_location(list(e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
        for e in exc.errors()[:5]
    )


def _saved(fields: str | None, t: Callable[[str], str]) -> str | None:
    """The outcome line after a saved form: which fields changed (``?saved=pole,lat,lon``)."""
    if fields is None:
        return None
    names = [t(METADATA_LABELS[f]) for f in fields.split(",") if f in METADATA_LABELS]
    if not names:
        return t("meta_unchanged")
    return t("meta_saved").format(fields=t("meta_list_sep").join(names))


@router.post("/devices/{device_id}/metadata", response_class=HTMLResponse)
async def update_metadata(request: Request, device_id: str, person: Posted) -> Response:
    """Save the metadata form through the API's own route; back to the page with the fields
    that changed, or the page again with what was typed and the API's reason."""
    if not person.may("provision"):
        raise Forbidden
    try:
        before, _ = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return render(request, "error.html", person, status_code=404, message="not_found")
    form = await request.form()
    typed = {
        name: value if isinstance(value := form.get(name, ""), str) else ""
        for name in METADATA_LABELS
    }
    shown = {name: form.get(f"was_{name}") for name in METADATA_LABELS}
    was = (
        {name: value for name, value in shown.items() if isinstance(value, str)}
        if all(isinstance(value, str) for value in shown.values())
        else None
    )
    t = translator(person.language)
    try:
        body = _update(typed, was, person, t)
        after = await api_update_device(device_id, body, hub_of(request), person.principal, request)
    except FormUnreadable as exc:
        return await _page(request, person, device_id, 400, typed, str(exc), was)
    except ValidationError as exc:
        return await _page(request, person, device_id, 422, typed, _problems(exc), was)
    except HTTPException as exc:
        if exc.status_code == 404:
            return render(request, "error.html", person, status_code=404, message="not_found")
        return await _page(request, person, device_id, exc.status_code, typed, str(exc.detail), was)
    changed = [f for f in METADATA_LABELS if getattr(before, f) != getattr(after, f)]
    return RedirectResponse(
        f"/devices/{device_id}?saved={','.join(changed)}#metadata", status_code=303
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
        body = CommandCreate(name=name, params=form_params(command, form))
        row = await api_send_command(device_id, body, hub_of(request), person.principal, request)
    except CommandRejected as exc:
        return RedirectResponse(f"/devices/{device_id}?error={quote(str(exc))}", status_code=303)
    return RedirectResponse(f"/devices/{device_id}#command-{row.command_id}", status_code=303)


#: the ranges the history chart offers, in hours, and the windows it draws per series at most
HISTORY_HOURS = (1, 6, 24, 168, 720)
HISTORY_POINTS = 300
HISTORY_AGGREGATES = ("mean", "min", "max")
#: points on one chart at most
MAX_CHART_POINTS = 6


@router.get("/devices/{device_id}/history.json")
async def history(
    request: Request,
    device_id: str,
    person: Person,
    point: Annotated[list[str], Query(description="A numeric point; repeat for up to six.")],
    hours: Annotated[int, Query(ge=1, le=max(HISTORY_HOURS))] = 24,
    aggregate: Literal["mean", "min", "max"] = "mean",
) -> Response:
    """Some numeric points' values over the last ``hours``, aggregated per window (about 300
    windows), in one store query, for the chart: ``{"times": [s], "window_s": s, "series":
    [{"point", "label", "unit", "values": [...]}]}``, each series' values on the shared
    ``times`` (null: no reading of that point in that window)."""
    try:
        _, profile = await _device(request, person, device_id)
    except (HTTPException, UnknownDevice):
        return JSONResponse({"detail": "not found"}, status_code=404)
    names = list(dict.fromkeys(point))  # in the order asked, once each
    if len(names) > MAX_CHART_POINTS:
        return JSONResponse(
            {"detail": f"at most {MAX_CHART_POINTS} points on a chart, got {len(names)}"},
            status_code=422,
        )
    for name in names:
        spec = profile.points.get(name)
        if spec is None or not spec.is_numeric:
            return JSONResponse({"detail": f"no numeric point {name!r}"}, status_code=422)
    end_ms = int(time.time() * 1000)
    start_ms = end_ms - hours * 3_600_000
    window_ms = max(1000, hours * 3_600_000 // HISTORY_POINTS)
    query = SeriesQuery(
        profile=profile.name,
        device_ids=(device_id,),
        points=tuple(names),
        start_ms=start_ms,
        end_ms=end_ms,
        window_ms=window_ms,
        aggregate=aggregate,
        limit=HISTORY_POINTS + 2,
    )
    found = {s.point: dict(s.values) for s in await hub_of(request).store.query(query)}
    times = sorted({t for values in found.values() for t in values})

    def values(name: str) -> list[float | None]:
        mine = found.get(name, {})
        return [None if (v := mine.get(t)) is None else float(v) for t in times]

    return JSONResponse(
        {
            "start": start_ms / 1000,
            "end": end_ms / 1000,
            "window_s": window_ms / 1000,
            "aggregate": aggregate,
            "times": [t / 1000 for t in times],
            "series": [
                {
                    "point": name,
                    "label": profile.describe_point(name, person.language),
                    "unit": profile.points[name].unit,
                    "values": values(name),
                }
                for name in names
            ],
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
                v.name: {"text": v.text, "label": v.label}
                for v in show_values(profile, values, language=person.language)
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
