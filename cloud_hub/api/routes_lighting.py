"""Routes under /api/v1/lighting/strategies: scheduled dimming of groups of poles.

Writing needs the ``command`` permission (operators have it), reading ``read``. A key scoped
to a site (a technician's) creates strategies confined to its site and sees only those.
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cloud_hub.api.audit import audit
from cloud_hub.api.auth import Principal
from cloud_hub.api.deps import Commander, HubDep, Reader
from cloud_hub.api.problems import problem_responses
from cloud_hub.api.schemas import UtcDateTime
from cloud_hub.api.scope import confined_site, not_found, selector_in_scope
from cloud_hub.hub import Hub
from cloud_hub.lighting import (
    Firing,
    LightingFiringRow,
    LightingStrategyRow,
    NothingInEffect,
    PointState,
    StepSpec,
    StrategySpec,
    firings_between,
    next_firing,
    spec_of,
    states_after,
)
from cloud_hub.lighting.schedule import DEFAULT_REACH
from cloud_hub.registry import utcnow

__all__ = ["router"]

router = APIRouter(
    prefix="/api/v1/lighting/strategies",
    tags=["lighting"],
    responses=problem_responses(
        400,
        401,
        403,
        404,
        422,
        s401="No API key, or an unknown or revoked one",
        s403="The key's role may not do this, or the selector leaves the key's site",
        s404="No such strategy (or not in the key's site)",
        s422="Invalid strategy, or a step no selected device accepts",
    ),
)

_FIRING_EXAMPLE: dict[str, JsonValue] = {
    "step": 0,
    "at": "sunset+10m",
    "at_utc": "2026-12-01T09:10:00Z",
    "at_local": "2026-12-01T17:10:00+08:00",
    "command": "set_dimming",
    "params": {"level": 100},
    "state": {"smart_pole": {"dimming": 100, "lamp_on": True}},
}


class PlannedFiring(BaseModel):
    """One upcoming step of a strategy."""

    model_config = ConfigDict(json_schema_extra={"examples": [_FIRING_EXAMPLE]})

    step: int = Field(description="Index of the step in the strategy's steps.")
    at: str = Field(description="The step's `at`, as written.")
    at_utc: UtcDateTime
    at_local: datetime = Field(description="The same instant in the strategy's time zone.")
    command: str
    params: dict[str, Any]
    state: dict[str, dict[str, bool | int | float | str]] = Field(
        default_factory=dict,
        description="In a preview: per profile of the selected devices, the points the "
        "strategy writes as this step leaves them (smart_pole: lamp_on and dimming; "
        "set_dimming 0 and lamp_off switch off and keep the level). Earlier steps of the last "
        "8 days count; a point no step wrote is absent.",
    )


class SkippedDay(BaseModel):
    step: int
    date: dt.date = Field(description="The local date without that sun event.")
    reason: str


class StrategyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "strategy_id": "5f0c3a9e2b7d4e1f8a6b0c2d4e6f8a1b",
                    "name": "ring road nights",
                    "selector": {"site": "ring-road"},
                    "timezone": "Asia/Shanghai",
                    "lat": 31.23,
                    "lon": 121.47,
                    "steps": [
                        {"at": "sunset+10m", "command": "set_dimming", "params": {"level": 100}},
                        {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
                    ],
                    "weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                    "enabled": True,
                    "created_by": "k1",
                    "created_at": "2026-12-01T08:00:00Z",
                    "updated_at": "2026-12-01T08:00:00Z",
                    "next_firing": _FIRING_EXAMPLE,
                }
            ]
        }
    )

    strategy_id: str
    name: str
    selector: dict[str, Any]
    timezone: str
    lat: float | None
    lon: float | None
    steps: list[StepSpec]
    weekdays: list[str]
    enabled: bool
    created_by: str = Field(description="The API key that created it.")
    created_at: UtcDateTime
    updated_at: UtcDateTime
    next_firing: PlannedFiring | None = Field(
        description="The next step within 8 days (null if none, or disabled)."
    )


class Preview(BaseModel):
    strategy_id: str
    timezone: str
    start: UtcDateTime
    end: UtcDateTime
    firings: list[PlannedFiring]
    skipped: list[SkippedDay] = Field(description="Sun steps that do not happen on a date.")


class FiringOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "step": 1,
                    "scheduled_for": "2026-12-01T15:30:00Z",
                    "fired_at": "2026-12-01T15:30:00Z",
                    "trigger": "schedule",
                    "command": "set_dimming",
                    "params": {"level": 50},
                    "outcome": "sent",
                    "detail": "",
                    "group_id": "0b8f6c1e9d2a4b7c8e5f3a1d2c4b6e8f",
                }
            ]
        },
    )

    id: int
    step: int
    scheduled_for: UtcDateTime = Field(description="The step's instant (apply-now: when asked).")
    fired_at: UtcDateTime
    trigger: str = Field(description="schedule or apply_now")
    command: str
    params: dict[str, Any]
    outcome: str = Field(description="sending, sent, rejected, failed or missed")
    detail: str
    group_id: str | None = Field(
        description="The command group sent: its progress at /api/v1/command-groups/{group_id}."
    )


class FiringList(BaseModel):
    items: list[FiringOut] = Field(description="Newest scheduled first.")


class Applied(BaseModel):
    in_effect: PlannedFiring = Field(description="The step in effect now (its last instant).")
    firing: FiringOut


def _planned(spec: StrategySpec, firing: Firing, state: PointState | None = None) -> PlannedFiring:
    return PlannedFiring(
        step=firing.step,
        at=spec.steps[firing.step].at,
        at_utc=firing.at,
        at_local=firing.local,
        command=firing.command,
        params=firing.params,
        state=state or {},
    )


def _out(row: LightingStrategyRow) -> StrategyOut:
    spec = spec_of(row)
    upcoming = next_firing(spec, utcnow()) if spec.enabled else None
    return StrategyOut(
        strategy_id=row.strategy_id,
        name=row.name,
        selector=row.selector,
        timezone=row.timezone,
        lat=row.lat,
        lon=row.lon,
        steps=spec.steps,
        weekdays=list(spec.weekdays),
        enabled=row.enabled,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next_firing=_planned(spec, upcoming) if upcoming is not None else None,
    )


async def _strategy(hub: Hub, caller: Principal, strategy_id: str) -> LightingStrategyRow:
    row = await hub.lighting.store.get(strategy_id)
    if row is None or not selector_in_scope(caller, row.selector):
        raise not_found(f"no lighting strategy '{strategy_id}'")
    return row


def _confined(caller: Principal, spec: StrategySpec) -> StrategySpec:
    """A site-scoped key's strategy selects within its site only."""
    if caller.site is None:
        return spec
    selector = spec.selector.model_copy(update={"site": confined_site(caller, spec.selector.site)})
    return spec.model_copy(update={"selector": selector})


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_strategy(
    body: StrategySpec, hub: HubDep, caller: Commander, request: Request
) -> StrategyOut:
    """Create a strategy. Every step must be accepted by the profile of at least one device
    the selector picks (422 with the reason otherwise)."""
    spec = _confined(caller, body)
    row = await hub.lighting.create(spec, created_by=caller.key_id)
    await audit(
        request,
        "lighting_strategy.create",
        f"lighting_strategy:{row.strategy_id}",
        strategy=spec.model_dump(mode="json"),
    )
    return _out(row)


@router.get("")
async def list_strategies(hub: HubDep, caller: Reader) -> list[StrategyOut]:
    """Every strategy (a site-scoped key: those of its site), oldest first."""
    rows = await hub.lighting.store.strategies()
    return [_out(row) for row in rows if selector_in_scope(caller, row.selector)]


@router.get("/{strategy_id}")
async def get_strategy(strategy_id: str, hub: HubDep, caller: Reader) -> StrategyOut:
    return _out(await _strategy(hub, caller, strategy_id))


@router.put("/{strategy_id}")
async def replace_strategy(
    strategy_id: str, body: StrategySpec, hub: HubDep, caller: Commander, request: Request
) -> StrategyOut:
    """Replace a strategy (checked as on creation). Steps scheduled before the change that
    have not fired are not sent afterwards."""
    await _strategy(hub, caller, strategy_id)
    spec = _confined(caller, body)
    row = await hub.lighting.replace(strategy_id, spec)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no lighting strategy '{strategy_id}'")
    await audit(
        request,
        "lighting_strategy.replace",
        f"lighting_strategy:{strategy_id}",
        strategy=spec.model_dump(mode="json"),
    )
    return _out(row)


@router.delete("/{strategy_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_strategy(
    strategy_id: str, hub: HubDep, caller: Commander, request: Request
) -> Response:
    """Delete a strategy and its firing history (command groups it sent stay)."""
    await _strategy(hub, caller, strategy_id)
    if not await hub.lighting.remove(strategy_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no lighting strategy '{strategy_id}'")
    await audit(request, "lighting_strategy.delete", f"lighting_strategy:{strategy_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{strategy_id}/preview")
async def preview_strategy(
    strategy_id: str,
    hub: HubDep,
    caller: Reader,
    hours: Annotated[int, Query(ge=1, le=168, description="How far ahead.")] = 48,
) -> Preview:
    """The steps that will happen in the next ``hours`` (also for a disabled strategy), with
    their UTC and local times and the lamp state each leaves (``state``: lamp_on and dimming
    of a smart pole); sun steps skipped on dates without that sun event."""
    row = await _strategy(hub, caller, strategy_id)
    spec = spec_of(row)
    start = utcnow()
    end = start + timedelta(hours=hours)
    schedule = firings_between(spec, start, end)
    earlier = firings_between(spec, start - DEFAULT_REACH, start).firings
    profiles = await hub.lighting.profiles(spec.selector)
    states = states_after(profiles, schedule.firings, earlier)
    return Preview(
        strategy_id=strategy_id,
        timezone=spec.timezone,
        start=start,
        end=end,
        firings=[_planned(spec, f, s) for f, s in zip(schedule.firings, states, strict=True)],
        skipped=[SkippedDay(step=s.step, date=s.day, reason=s.reason) for s in schedule.skipped],
    )


@router.get("/{strategy_id}/firings")
async def list_firings(
    strategy_id: str,
    hub: HubDep,
    caller: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FiringList:
    """What the scheduler (and apply-now) did, newest first, with the command groups sent."""
    await _strategy(hub, caller, strategy_id)
    rows: list[LightingFiringRow] = await hub.lighting.store.firings(strategy_id, limit)
    return FiringList(items=[FiringOut.model_validate(row) for row in rows])


@router.post(
    "/{strategy_id}/apply-now",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(409, s409="No step of the strategy happened in the last 8 days"),
)
async def apply_now(strategy_id: str, hub: HubDep, caller: Commander, request: Request) -> Applied:
    """Send the step in effect now (the latest one scheduled before now) to the devices the
    strategy selects now, e.g. after new poles were installed. Recorded as a firing."""
    row = await _strategy(hub, caller, strategy_id)
    try:
        current, fired = await hub.lighting.apply_now(row)
    except NothingInEffect as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    await audit(
        request,
        "lighting_strategy.apply_now",
        f"lighting_strategy:{strategy_id}",
        step=current.step,
        command=current.command,
        params=current.params,
        group_id=fired.group_id,
        outcome=fired.outcome,
    )
    return Applied(
        in_effect=_planned(spec_of(row), current), firing=FiringOut.model_validate(fired)
    )
