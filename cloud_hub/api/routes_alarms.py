"""Routes under /api/v1/alarms: list (paginated), read and acknowledge alarms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.alarms import (
    ALARM_STATES,
    AlarmAlreadyAcknowledged,
    AlarmEngine,
    AlarmNotFound,
    AlarmOut,
    AlarmRow,
    InvalidCursor,
)
from cloud_hub.api.audit import audit
from cloud_hub.api.auth import Principal, require
from cloud_hub.api.deps import HubDep, Reader
from cloud_hub.api.problems import problem
from cloud_hub.api.scope import alarm_in_scope, current_sites, scoped_page, sees_object
from device_profiles import AlarmRule

__all__ = ["AlarmAck", "AlarmList", "router"]

SEVERITIES: tuple[str, ...] = get_args(AlarmRule.model_fields["severity"].annotation)


def _engine(request: Request) -> AlarmEngine:
    engine: AlarmEngine = request.app.state.hub.alarms
    return engine


AlarmsDep = Annotated[AlarmEngine, Depends(_engine)]
router = APIRouter(prefix="/api/v1/alarms", tags=["alarms"])


class AlarmList(BaseModel):
    items: list[AlarmOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class AlarmAck(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "crew dispatched"}]}
    )

    note: str = Field(default="", max_length=2000, description="What the operator is doing.")


def _choices(name: str, given: str | None, allowed: tuple[str, ...]) -> list[str]:
    if not given:
        return []
    chosen = [part.strip() for part in given.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{name}: unknown {', '.join(unknown)} (one or more of {', '.join(allowed)}, comma-separated)",
        )
    return chosen


def _one_or_more(allowed: Sequence[str]) -> str:
    """The pattern of what ``_choices`` takes: names, commas, blanks around them."""
    name = "(" + "|".join(allowed) + ")?"
    return rf"^\s*{name}\s*(,\s*{name}\s*)*$"


@router.get("")
async def list_alarms(
    engine: AlarmsDep,
    hub: HubDep,
    caller: Reader,
    state: Annotated[
        str | None,
        Query(
            description="active, acknowledged, cleared; comma-separated",
            pattern=_one_or_more(ALARM_STATES),
        ),
    ] = None,
    severity: Annotated[
        str | None,
        Query(
            description="critical, major, minor, warning, info; comma-separated",
            pattern=_one_or_more(SEVERITIES),
        ),
    ] = None,
    device_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> AlarmList:
    """Alarms, newest raised first, one page at a time (a site-scoped key: those of its site)."""
    states = _choices("state", state, ALARM_STATES)
    severities = _choices("severity", severity, SEVERITIES)
    sites = await current_sites(hub) if caller.site is not None else None

    async def fetch(n: int, after: str | None) -> tuple[list[AlarmRow], str | None]:
        found = await engine.store.page(
            states=states, severities=severities, device_id=device_id, limit=n, cursor=after
        )
        return found.items, found.next_cursor

    def visible(row: AlarmRow) -> bool:
        return sites is None or sees_object(caller, sites, row.device_id, row.agent_id)

    try:
        page = await scoped_page(fetch, visible, limit, cursor)
    except InvalidCursor as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return AlarmList(
        items=[AlarmOut.model_validate(row) for row in page.items], next_cursor=page.next_cursor
    )


@router.get("/{alarm_id}")
async def get_alarm(alarm_id: str, engine: AlarmsDep, hub: HubDep, caller: Reader) -> AlarmOut:
    return AlarmOut.model_validate(await alarm_in_scope(hub, caller, alarm_id))


@router.post(
    "/{alarm_id}/acknowledge",
    response_model=AlarmOut,
    responses={409: {"description": "The alarm was already acknowledged"}},
)
async def acknowledge_alarm(
    alarm_id: str,
    body: AlarmAck,
    engine: AlarmsDep,
    hub: HubDep,
    principal: Annotated[Principal, Depends(require("alarm:ack"))],
    request: Request,
) -> Any:
    """An operator has seen the alarm. An active alarm becomes ``acknowledged``; a cleared one
    stays ``cleared`` and records the acknowledgement."""
    await alarm_in_scope(hub, principal, alarm_id)
    try:
        row = await engine.acknowledge(alarm_id, principal.name, body.note)
        await audit(request, "alarm.acknowledge", f"alarm:{alarm_id}", note=body.note)
    except AlarmNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except AlarmAlreadyAcknowledged as exc:
        return problem(
            status.HTTP_409_CONFLICT,
            "Conflict",
            str(exc),
            alarm=AlarmOut.model_validate(exc.alarm).model_dump(mode="json"),
        )
    return AlarmOut.model_validate(row)
