"""Routes for commands to many devices at once, and for cancelling a command."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud_hub.api.audit import audit
from cloud_hub.api.auth import Principal
from cloud_hub.api.deps import Commander, HubDep, Reader
from cloud_hub.api.problems import problem_responses
from cloud_hub.api.schemas import CommandOut, UtcDateTime
from cloud_hub.api.scope import (
    command_in_scope,
    confined_site,
    not_found,
    selector_in_scope,
)
from cloud_hub.hub import Hub
from cloud_hub.lighting.spec import SELECTOR_NOT_EMPTY
from cloud_hub.registry import TERMINAL_STATUSES, CommandGroupRow

__all__ = ["router"]

#: the furthest a list may be skipped into (the database's integers end, the lists long before)
MAX_OFFSET = 1_000_000_000

router = APIRouter(
    prefix="/api/v1",
    tags=["commands"],
    responses=problem_responses(
        400,
        401,
        403,
        404,
        422,
        s401="No API key, or an unknown or revoked one",
        s403="The key's role may not do this",
        s404="No such command or command group",
    ),
)


class Selector(BaseModel):
    """Which devices: every given criterion must match (at least one is required)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=SELECTOR_NOT_EMPTY)

    device_ids: list[str] | None = Field(default=None, max_length=10_000)
    site: str | None = None
    profile: str | None = None
    tags: dict[str, str] | None = None

    @model_validator(mode="after")
    def _not_everything(self) -> Selector:
        if not any((self.device_ids, self.site, self.profile, self.tags)):
            raise ValueError("give at least one of device_ids, site, profile, tags")
        return self


class GroupCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "selector": {"site": "xinhua-road"},
                    "name": "set_dimming",
                    "params": {"level": 30},
                }
            ]
        },
    )

    selector: Selector
    name: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_s: float | None = Field(default=None, gt=0, le=7 * 86400)


class GroupOut(BaseModel):
    group_id: str
    name: str
    params: dict[str, Any]
    selector: dict[str, Any]
    total: int = Field(description="Commands created (devices that accepted the command).")
    by_status: dict[str, int]
    done: bool = Field(description="Every command has a final status.")
    rejected: dict[str, str] = Field(description="Devices whose profile refused the command, why.")
    created_by: str = Field(description="Who sent it: an API key's id, or user:<name>.")
    created_at: UtcDateTime


async def _group_out(hub: Hub, caller: Principal, group_id: str) -> GroupOut:
    """The group's progress, or 404 when it does not exist or selects beyond the caller's
    site."""
    found = await hub.registry.get_group(group_id)
    if found is None or not selector_in_scope(caller, found[0].selector):
        raise not_found(f"no command group '{group_id}'")
    return _progress(*found)


def _progress(group: CommandGroupRow, counts: dict[str, int]) -> GroupOut:
    total = sum(counts.values())
    finished = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
    return GroupOut(
        group_id=group.group_id,
        name=group.name,
        params=group.params,
        selector=group.selector,
        total=total,
        by_status=counts,
        done=finished == total,
        rejected=group.rejected,
        created_by=group.created_by,
        created_at=group.created_at,
    )


@router.post("/command-groups", status_code=status.HTTP_202_ACCEPTED)
async def create_group(
    body: GroupCreate, hub: HubDep, caller: Commander, request: Request
) -> GroupOut:
    """Send one command to every selected device; follow the aggregated progress.

    A key scoped to a site selects within its site only."""
    selector = body.selector.model_dump(exclude_none=True)
    site = confined_site(caller, selector.get("site"))
    if site is not None:
        selector["site"] = site
    group = await hub.send_group_command(
        selector, body.name, body.params, body.ttl_s, created_by=caller.key_id
    )
    await audit(
        request,
        "command_group.send",
        f"group:{group.group_id}",
        name=body.name,
        params=body.params,
        selector=selector,
    )
    return await _group_out(hub, caller, group.group_id)


@router.get(
    "/command-groups",
    responses={
        200: {
            "headers": {
                "X-Total-Count": {
                    "description": "How many groups the caller sees in all.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            }
        }
    },
)
async def list_groups(
    hub: HubDep,
    caller: Reader,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200, description="Groups per page at most.")] = 50,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="Groups to skip (newest first).")
    ] = 0,
) -> list[GroupOut]:
    """Command groups, newest first, one page, each with its progress; the ``X-Total-Count``
    header says how many there are in all. A site-scoped key sees the groups confined to its
    site only (as for one group), filtered, paged and counted in the registry."""
    page, total = await hub.registry.page_groups(caller.site, limit, offset)
    response.headers["X-Total-Count"] = str(total)
    return [_progress(group, counts) for group, counts in page]


@router.get("/command-groups/{group_id}")
async def get_group(group_id: str, hub: HubDep, caller: Reader) -> GroupOut:
    """A group's progress (a site-scoped key: groups confined to its site)."""
    return await _group_out(hub, caller, group_id)


class GroupCancelled(BaseModel):
    """What cancelling a group did."""

    group_id: str
    cancelled: int = Field(description="Commands cancelled now (those finished stay as they are).")
    progress: GroupOut


@router.post("/command-groups/{group_id}/cancel", responses=problem_responses(404))
async def cancel_group(
    group_id: str, hub: HubDep, caller: Commander, request: Request
) -> GroupCancelled:
    """Cancel every command of the group without a final status yet, in one step (a
    site-scoped key: groups confined to its site). Audited as `command_group.cancel`."""
    await _group_out(hub, caller, group_id)
    rows = await hub.cancel_group(group_id)
    if rows:
        await audit(
            request, "command_group.cancel", f"command_group:{group_id}", cancelled=len(rows)
        )
    return GroupCancelled(
        group_id=group_id, cancelled=len(rows), progress=await _group_out(hub, caller, group_id)
    )


@router.post(
    "/commands/{command_id}/cancel",
    responses=problem_responses(409, s409="The command already has a final status"),
)
async def cancel_command(
    command_id: str, hub: HubDep, caller: Commander, request: Request
) -> CommandOut:
    """Cancel a command that has no final status yet."""
    await command_in_scope(hub, caller, command_id)
    row, cancelled = await hub.cancel_command(command_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no command '{command_id}'")
    if cancelled:
        await audit(request, "command.cancel", f"command:{command_id}")
    else:
        raise HTTPException(status.HTTP_409_CONFLICT, f"command is already {row.status}")
    return CommandOut.model_validate(row)
