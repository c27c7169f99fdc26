"""Routes under /api/v1: devices, their telemetry, and commands."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status

from cloud_hub.api.schemas import CommandCreate, CommandOut, DeviceOut, LatestTelemetry, PointValue
from cloud_hub.hub import Hub, UnknownDevice
from device_profiles import Value

__all__ = ["router"]


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(_hub)]
router = APIRouter(prefix="/api/v1")


@router.get("/devices", tags=["devices"])
async def list_devices(hub: HubDep) -> list[DeviceOut]:
    return [DeviceOut.model_validate(d) for d in await hub.registry.list_devices()]


@router.get("/devices/{device_id}", tags=["devices"])
async def get_device(device_id: str, hub: HubDep) -> DeviceOut:
    device = await hub.registry.get_device(device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device '{device_id}'")
    return DeviceOut.model_validate(device)


@router.get("/devices/{device_id}/telemetry/latest", tags=["telemetry"])
async def latest_telemetry(device_id: str, hub: HubDep) -> LatestTelemetry:
    """The newest stored value of each point of a device, with the time the edge read it."""
    try:
        _, profile = await hub.profile_for(device_id)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    latest = await hub.store.latest(device_id, profile.name, list(profile.points))
    points = {}
    for name, item in latest.items():
        point = profile.points[name]
        value: Value = item.value
        if point.type == "bool":
            value = bool(value)
        elif point.is_numeric and not point.is_integral and isinstance(value, int):
            value = float(value)
        points[name] = PointValue(
            value=value, ts=datetime.fromtimestamp(item.ts_ms / 1000, UTC), unit=point.unit
        )
    return LatestTelemetry(device_id=device_id, profile=profile.name, points=points)


@router.post(
    "/devices/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["commands"],
    responses={422: {"description": "Unknown command, bad parameters or out-of-range values"}},
)
async def send_command(device_id: str, body: CommandCreate, hub: HubDep) -> CommandOut:
    """Validate a command against the device's profile, queue it and send it to its agent.

    Follow its progress at ``GET /api/v1/commands/{command_id}``.
    """
    try:
        row = await hub.send_command(device_id, body.name, body.params, body.ttl_s)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return CommandOut.model_validate(row)


@router.get("/commands/{command_id}", tags=["commands"])
async def get_command(command_id: str, hub: HubDep) -> CommandOut:
    row = await hub.registry.get_command(command_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no command '{command_id}'")
    return CommandOut.model_validate(row)
