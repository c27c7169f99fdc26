"""Routes under /api/v1: devices, their telemetry, and commands."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.audit import audit
from cloud_hub.api.auth import Principal, Role, require
from cloud_hub.api.deps import Admin, Commander, HubDep, Reader
from cloud_hub.api.keys import create_api_key
from cloud_hub.api.problems import problem_responses
from cloud_hub.api.schemas import (
    AgentOut,
    CommandCreate,
    CommandOut,
    DeviceOut,
    DeviceUpdate,
    LatestTelemetry,
    PointValue,
    UtcDateTime,
)
from cloud_hub.api.scope import (
    agent_in_scope,
    command_in_scope,
    confined_site,
    device_in_scope,
    not_found,
    sees,
)
from cloud_hub.coap.models import provision_coap_secret
from cloud_hub.hub import Hub, UnknownDevice
from cloud_hub.registry import AgentConfigRow, AgentRow, DeviceFilter
from cloud_hub.registry.store import TAG_KEY_PATTERN
from cloud_hub.storage import typed_value
from device_profiles import Value
from device_profiles.wire import ID_PATTERN

__all__ = ["router"]


_ERRORS = problem_responses(
    400,
    401,
    403,
    404,
    422,
    s401="No API key, or an unknown or revoked one",
    s403="The key's role may not do this",
    s404="No such agent, device, command or key",
)
router = APIRouter(prefix="/api/v1", responses=_ERRORS)


def _agent_out(hub: Hub, row: AgentRow) -> AgentOut:
    out = AgentOut.model_validate(row)
    health = hub.ingest.health.get(row.agent_id)
    return out.model_copy(update={"health": health.model_dump() if health else None})


#: Pagination of the lists (ordered by id): ``?limit=&offset=``.
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page at most.")]
Offset = Annotated[int, Query(ge=0, description="Items to skip (ordered by id).")]


@router.get("/agents", tags=["agents"])
async def list_agents(
    hub: HubDep, caller: Reader, response: Response, limit: Limit = 1000, offset: Offset = 0
) -> list[AgentOut]:
    """Agents by id, one page (a site-scoped key: those with a device in its site); the
    ``X-Total-Count`` header says how many there are in all. Paged in the registry."""
    rows, total = await hub.registry.page_agents(caller.site, limit, offset)
    response.headers["X-Total-Count"] = str(total)
    return [_agent_out(hub, row) for row in rows]


@router.get("/agents/{agent_id}", tags=["agents"])
async def get_agent(agent_id: str, hub: HubDep, caller: Reader) -> AgentOut:
    await agent_in_scope(hub, caller, agent_id)
    row = await hub.registry.get_agent(agent_id)
    if row is None:
        raise not_found(f"no agent '{agent_id}'")
    return _agent_out(hub, row)


@router.get("/devices", tags=["devices"])
async def list_devices(
    hub: HubDep,
    caller: Reader,
    response: Response,
    limit: Limit = 1000,
    offset: Offset = 0,
    site: Annotated[str | None, Query(description="Only this site's devices.")] = None,
    profile: Annotated[str | None, Query(description="Only devices of this profile.")] = None,
    device_status: Annotated[
        str | None, Query(alias="status", description="online, offline or unknown.")
    ] = None,
    q: Annotated[str | None, Query(description="A part of the device id.")] = None,
    tag: Annotated[
        list[Annotated[str, Field(pattern=rf"^{TAG_KEY_PATTERN}=.*$")]] | None,
        Query(description="`key=value`: only devices with this tag; repeat for several."),
    ] = None,
) -> list[DeviceOut]:
    """Devices by site, pole, mount position and id, one page, filtered and paged in the
    registry; the ``X-Total-Count`` header says how many the filters select in all. A
    site-scoped key sees its site's only (a ``site`` of another site selects nothing)."""
    if caller.site is not None and site not in (None, caller.site):
        response.headers["X-Total-Count"] = "0"
        return []
    try:
        tags = DeviceFilter.tag_pairs(tag or [])
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    filters = DeviceFilter(
        site=caller.site or site, profile=profile, status=device_status, search=q, tags=tags
    )
    rows, total = await hub.registry.page_devices(filters, limit, offset)
    response.headers["X-Total-Count"] = str(total)
    return [DeviceOut.model_validate(d) for d in rows]


@router.get("/devices/{device_id}", tags=["devices"])
async def get_device(device_id: str, hub: HubDep, caller: Reader) -> DeviceOut:
    return DeviceOut.model_validate(await device_in_scope(hub, caller, device_id))


@router.get("/devices/{device_id}/telemetry/latest", tags=["telemetry"])
async def latest_telemetry(device_id: str, hub: HubDep, caller: Reader) -> LatestTelemetry:
    """The newest stored value of each point of a device, with the time the edge read it."""
    await device_in_scope(hub, caller, device_id)
    try:
        _, profile = await hub.profile_for(device_id)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    latest = await hub.store.latest(device_id, profile.name, list(profile.points))
    points = {}
    for name, item in latest.items():
        point = profile.points[name]
        value: Value = typed_value(point, item.value)
        points[name] = PointValue(
            value=value, ts=datetime.fromtimestamp(item.ts_ms / 1000, UTC), unit=point.unit
        )
    return LatestTelemetry(device_id=device_id, profile=profile.name, points=points)


#: technicians (of their site) and admins
Provisioner = Annotated[Principal, Depends(require("provision"))]


@router.patch(
    "/devices/{device_id}",
    tags=["devices"],
    responses=problem_responses(
        403,
        422,
        s403="The key's role may not provision, a technician's key has no site, or a "
        "site-scoped key would move the device to another site or clear its site",
        s422="Invalid metadata: a label empty or too long, a position out of range or lat "
        "without lon, a bad tag key, a tag too long, too many tags",
    ),
)
async def update_device(
    device_id: str, body: DeviceUpdate, hub: HubDep, caller: Provisioner, request: Request
) -> DeviceOut:
    """Change a device's metadata: site, pole, mount position, position (`lat` and `lon`
    together) and tags (the whole map at once). Only the fields given change; `null` clears
    one. Technicians of a site and admins; a site-scoped key keeps the device in its site.
    Audited as `device.update` with each changed field's value before and after."""
    if caller.role != "admin" and caller.site is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"a {caller.role} key without a site may not edit devices"
        )
    device = await device_in_scope(hub, caller, device_id)
    changes = body.changes()
    if "site" in changes and caller.site is not None:
        if changes["site"] is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this key is limited to site '{caller.site}': it may not clear a device's site",
            )
        confined_site(caller, changes["site"])  # 403 for another site
    before = {name: getattr(device, name) for name in changes}
    changed = {name: value for name, value in changes.items() if before[name] != value}
    if not changed:
        return DeviceOut.model_validate(device)
    updated = await hub.registry.update_device(device_id, changed)
    if updated is None:
        raise not_found(f"no device '{device_id}'")
    await audit(
        request,
        "device.update",
        f"device:{device_id}",
        before={name: before[name] for name in changed},
        after=changed,
    )
    if "site" in changed:  # who may see the device and its events has changed
        for directory in (getattr(request.app.state, "sites", None), hub.webhooks.sites):
            if directory is not None:
                directory.invalidate()
    return DeviceOut.model_validate(updated)


class DeviceMove(BaseModel):
    """Where a device goes: the agent it is behind from now on."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(pattern=ID_PATTERN, description="An agent the hub knows.")


@router.post("/devices/{device_id}/move", tags=["devices"])
async def move_device(
    device_id: str, body: DeviceMove, hub: HubDep, caller: Admin, request: Request
) -> DeviceOut:
    """Move a device to another agent (a replaced or re-wired gateway). This is the only way
    a device changes agent: an agent that announces a device of another agent is refused
    (audited, and alarmed as `device_claim_refused`). Audited as `device.move`."""
    device = await device_in_scope(hub, caller, device_id)
    if await hub.registry.get_agent(body.agent_id) is None:
        raise not_found(f"no agent '{body.agent_id}'")
    await agent_in_scope(hub, caller, body.agent_id)
    moved = await hub.registry.move_device(device_id, body.agent_id)
    if moved is None:
        raise not_found(f"no device '{device_id}'")
    hub.ingest.move_device(device_id, body.agent_id, moved.profile)
    await audit(
        request,
        "device.move",
        f"device:{device_id}",
        from_agent=device.agent_id,
        to_agent=body.agent_id,
    )
    return DeviceOut.model_validate(moved)


@router.post(
    "/devices/{device_id}/commands",
    status_code=status.HTTP_202_ACCEPTED,
    tags=["commands"],
    responses=problem_responses(422, s422="Unknown command, bad parameters or out-of-range values"),
)
async def send_command(
    device_id: str, body: CommandCreate, hub: HubDep, caller: Commander, request: Request
) -> CommandOut:
    """Validate a command against the device's profile, queue it and send it to its agent.

    Follow its progress at ``GET /api/v1/commands/{command_id}``.
    """
    await device_in_scope(hub, caller, device_id)
    try:
        row = await hub.send_command(device_id, body.name, body.params, body.ttl_s)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    await audit(
        request,
        "command.send",
        f"device:{device_id}",
        command_id=row.command_id,
        name=body.name,
        params=body.params,
    )
    return CommandOut.model_validate(row)


@router.get("/commands/{command_id}", tags=["commands"])
async def get_command(command_id: str, hub: HubDep, caller: Reader) -> CommandOut:
    return CommandOut.model_validate(await command_in_scope(hub, caller, command_id))


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role
    site: str | None = Field(
        default=None,
        max_length=64,
        description="The one site the key may see and act on (any role); none: every site. "
        "A site-scoped admin key creates keys of its own site only.",
    )


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    role: str
    site: str | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="Shown once; only its hash is stored.")


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, tags=["api keys"])
async def create_key(
    body: ApiKeyCreate, hub: HubDep, caller: Admin, request: Request
) -> ApiKeyCreated:
    site = confined_site(caller, body.site)
    row, secret = await create_api_key(hub.registry, body.name, body.role, site)
    await audit(request, "api_key.create", f"api_key:{row.key_id}", name=row.name, role=row.role)
    return ApiKeyCreated(
        key_id=row.key_id, name=row.name, role=row.role, site=row.site, secret=secret
    )


@router.get("/api-keys", tags=["api keys"])
async def list_keys(hub: HubDep, caller: Admin) -> list[ApiKeyOut]:
    return [
        ApiKeyOut(key_id=r.key_id, name=r.name, role=r.role, site=r.site)
        for r in await hub.registry.list_api_keys()
        if r.revoked_at is None and sees(caller.site, (r.site,))
    ]


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["api keys"])
async def revoke_key(key_id: str, hub: HubDep, caller: Admin, request: Request) -> Response:
    if caller.site is not None:
        keys = {r.key_id: r for r in await hub.registry.list_api_keys()}
        if key_id not in keys or not sees(caller.site, (keys[key_id].site,)):
            raise not_found(f"no active API key '{key_id}'")
    if not await hub.registry.revoke_api_key(key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no active API key '{key_id}'")
    await audit(request, "api_key.revoke", f"api_key:{key_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class AgentConfigIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "config": {
                        "devices": [
                            {
                                "device_id": "pole-0002",
                                "profile": "smart_pole",
                                "connection": {"transport": "modbus_tcp", "host": "192.168.10.22"},
                            }
                        ]
                    }
                }
            ]
        },
    )

    config: dict[str, Any] = Field(
        description="The agent's remotely manageable settings (its devices); the agent "
        "validates them and reports applied or rejected with the reason."
    )


class AgentConfigOut(BaseModel):
    agent_id: str
    version: int
    desired: dict[str, Any]
    desired_at: UtcDateTime
    status: str = Field(description="pending, applied or rejected (of the latest version)")
    reported_version: int | None
    detail: str | None


def _config_out(row: AgentConfigRow) -> AgentConfigOut:
    current = row.reported_version == row.version
    return AgentConfigOut(
        agent_id=row.agent_id,
        version=row.version,
        desired=row.desired,
        desired_at=row.desired_at,
        status=(row.reported_status or "pending") if current else "pending",
        reported_version=row.reported_version,
        detail=row.reported_detail,
    )


@router.put("/agents/{agent_id}/config", status_code=status.HTTP_202_ACCEPTED, tags=["agents"])
async def push_config(
    agent_id: str, body: AgentConfigIn, hub: HubDep, caller: Admin, request: Request
) -> AgentConfigOut:
    """Push a new configuration to an agent; it applies it without restarting."""
    await agent_in_scope(hub, caller, agent_id)
    try:
        row = await hub.push_config(agent_id, body.config)
    except UnknownDevice as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    await audit(request, "agent.config", f"agent:{agent_id}", version=row.version)
    return _config_out(row)


@router.get("/agents/{agent_id}/config", tags=["agents"])
async def get_config(agent_id: str, hub: HubDep, caller: Reader) -> AgentConfigOut:
    await agent_in_scope(hub, caller, agent_id)
    row = await hub.registry.get_config(agent_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no configuration pushed to '{agent_id}'")
    return _config_out(row)


class CoapSecretOut(BaseModel):
    agent_id: str
    secret: str = Field(
        description="Shown once: the agent's nbiot.secret, authenticating its CoAP uplinks."
    )


@router.post("/agents/{agent_id}/coap-secret", status_code=status.HTTP_201_CREATED, tags=["agents"])
async def create_coap_secret(agent_id: str, hub: HubDep, caller: Admin) -> CoapSecretOut:
    """Give an NB-IoT agent a (new) secret for its CoAP uplinks, before or after it first
    reports (the agent registers itself with its first uplink); an old secret stops working."""
    if not re.match(ID_PATTERN, agent_id):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"agent id must match {ID_PATTERN}"
        )
    await agent_in_scope(hub, caller, agent_id)
    secret = await provision_coap_secret(hub.registry, agent_id, actor=caller.key_id)
    return CoapSecretOut(agent_id=agent_id, secret=secret)
