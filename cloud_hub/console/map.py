"""The map: every device with a position, coloured by status and alarm, on a plain base.

``/map`` is the page (``map.js`` draws it on a canvas: thousands of markers, grouped into
clusters when they would overlap); ``/map/devices.json`` the markers a person may see (from the
registry, one query, compact rows); ``/map/devices/{id}.json`` what the side panel shows of one
device. No tile server by default, so it works with no internet: the sites are drawn where
their devices are, over a graticule; ``console.map_tiles_url`` adds the county's tiles.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy import select

from cloud_hub.alarms.models import AlarmRow
from cloud_hub.api.scope import device_in_scope
from cloud_hub.console.auth import Person, hub_of
from cloud_hub.console.device import COMMAND_STATES
from cloud_hub.console.rendering import PAGE_HEADERS, render
from cloud_hub.console.texts import translator
from cloud_hub.hub import UnknownDevice
from cloud_hub.registry import DeviceRow
from cloud_hub.storage import typed_value
from device_profiles import DeviceProfile
from device_profiles.display import show_values

__all__ = ["SEVERITY_RANK", "router"]

router = APIRouter(include_in_schema=False)
#: the worst open alarm decides a marker's colour
SEVERITY_RANK = {"critical": 5, "major": 4, "minor": 3, "warning": 2, "info": 1}


def _json(body: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers=PAGE_HEADERS)


@router.get("/map", response_class=HTMLResponse)
async def map_page(request: Request, person: Person) -> Response:
    tiles = hub_of(request).settings.console.map_tiles_url
    t = translator(person.language)
    return render(
        request,
        "map.html",
        person,
        active="map",
        tiles_url=tiles or "",
        command_labels={status: t(status) for status in COMMAND_STATES},
    )


@router.get("/map/devices.json")
async def markers(request: Request, person: Person) -> Response:
    """``[device_id, lat, lon, status, worst open alarm or null, site]`` of every device with
    a position that the person may see."""
    hub = hub_of(request)
    query = select(
        DeviceRow.device_id, DeviceRow.lat, DeviceRow.lon, DeviceRow.status, DeviceRow.site
    ).where(DeviceRow.lat.is_not(None), DeviceRow.lon.is_not(None))
    if person.principal.site is not None:
        query = query.where(DeviceRow.site == person.principal.site)
    async with hub.registry.session() as db:
        rows = (await db.execute(query.order_by(DeviceRow.device_id))).all()
        alarms = (
            await db.execute(
                select(AlarmRow.device_id, AlarmRow.severity).where(
                    AlarmRow.state.in_(("active", "acknowledged")), AlarmRow.device_id.is_not(None)
                )
            )
        ).all()
    worst: dict[str, str] = {}
    for device_id, severity in alarms:
        if device_id is None:
            continue
        if SEVERITY_RANK.get(severity, 0) > SEVERITY_RANK.get(worst.get(device_id, ""), 0):
            worst[device_id] = severity
    devices = [
        [d, round(lat or 0.0, 6), round(lon or 0.0, 6), status, worst.get(d), site]
        for d, lat, lon, status, site in rows
    ]
    return _json({"devices": devices})


@router.get("/map/devices/{device_id}.json")
async def panel(request: Request, device_id: str, person: Person) -> Response:
    hub = hub_of(request)
    try:
        device = await device_in_scope(hub, person.principal, device_id)
        _, profile = await hub.profile_for(device_id)
    except (HTTPException, UnknownDevice):
        return _json({"detail": "not found"}, 404)
    latest = await hub.store.latest(device_id, profile.name, list(profile.points))
    shown = show_values(
        profile,
        {name: typed_value(profile.points[name], v.value) for name, v in latest.items()},
        language=person.language,
    )
    page = await hub.alarms.store.page(
        states=("active", "acknowledged"), device_id=device_id, limit=10
    )
    return _json(
        {
            "device_id": device.device_id,
            "profile": device.profile,
            "status": device.status,
            "site": device.site,
            "pole": device.pole,
            "mount_position": device.mount_position,
            "values": [
                {"name": profile.describe_point(v.name, person.language), "text": v.text}
                for v in shown[:12]
            ],
            "alarms": [
                {"severity": a.severity, "message": a.message, "state": a.state} for a in page.items
            ],
            "commands": _actions(profile, person.language) if person.may("command") else [],
        }
    )


def _actions(profile: DeviceProfile, language: str) -> list[dict[str, Any]]:
    """The device's commands as the panel draws them: each parameter with its kind, range,
    choices and words in the person's language (the form posts to the device page's route)."""
    return [
        {
            "name": name,
            "label": profile.describe_command(name, language),
            "params": [
                {
                    "name": pname,
                    "label": profile.describe_command(name, language, pname),
                    "type": param.type,
                    "unit": param.unit,
                    "min": param.min,
                    "max": param.max,
                    "choices": param.choices,
                }
                for pname, param in command.params.items()
            ],
        }
        for name, command in profile.commands.items()
    ]
