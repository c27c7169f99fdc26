"""Telemetry queries: time ranges, aggregate windows, several points and devices."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from cloud_hub.api.deps import HubDep, Reader
from cloud_hub.api.schemas import QueryTime
from cloud_hub.api.scope import device_in_scope
from cloud_hub.hub import UnknownDevice
from cloud_hub.storage import EARLIEST_MS, LATEST_MS, Aggregate, SeriesQuery, aggregate_applies
from device_profiles import DeviceProfile

__all__ = ["router"]

MAX_DEVICES = 100
DEFAULT_SPAN_MS = 3_600_000
DEFAULT_WINDOW_S = 60.0
DEFAULT_AGGREGATE: Aggregate = "mean"


router = APIRouter(
    prefix="/api/v1",
    tags=["telemetry"],
    responses={
        401: {"description": "No API key, or an unknown or revoked one"},
        403: {"description": "The key's role may not do this"},
    },
)


class SeriesOut(BaseModel):
    device_id: str
    point: str
    unit: str
    values: list[tuple[int, Any]] = Field(
        description="[time, value] pairs, oldest first; time in ms since the epoch (UTC): the "
        "edge read time, or the start of the window when aggregated."
    )


class TelemetryOut(BaseModel):
    start_ms: int
    end_ms: int
    window_s: float | None
    agg: str | None
    series: list[SeriesOut]


def _check_aggregate(agg: Aggregate, wanted: list[str], profiles: list[DeviceProfile]) -> None:
    """422 for a point asked for by name that ``agg`` does not apply to."""
    for name in wanted:
        for profile in profiles:
            spec = profile.points.get(name)
            if spec is not None and not aggregate_applies(agg, spec.type):
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{agg!r} applies to {_APPLIES_TO[agg]}; {name!r} is {spec.type} "
                    f"(in profile {profile.name!r}): ask for 'last' or 'count', or leave it out",
                )


_APPLIES_TO = {"mean": "numbers", "min": "numbers and booleans", "max": "numbers and booleans"}


def _ms(value: datetime | None, default: int) -> int:
    return default if value is None else int(value.timestamp() * 1000)


@router.get(
    "/telemetry",
    responses={404: {"description": "Unknown device"}, 422: {"description": "Invalid query"}},
)
async def query_telemetry(
    hub: HubDep,
    caller: Reader,
    device_id: Annotated[list[str], Query(min_length=1, max_length=MAX_DEVICES)],
    point: Annotated[
        list[str] | None, Query(description="Points; all of the profile if none.")
    ] = None,
    start: Annotated[
        QueryTime | None,
        Query(
            description="From (RFC 3339); 1 h before end if none. Any time: the stores hold "
            "1677-09-21 to 2262-04-11 (InfluxDB's range), a range past it the data there is, an empty or reversed one none."
        ),
    ] = None,
    end: Annotated[
        QueryTime | None, Query(description="Until, exclusive (RFC 3339); now if none.")
    ] = None,
    window_s: Annotated[
        float | None,
        Query(
            ge=0.001,
            le=31 * 86400,
            description="Aggregate per window of this many seconds (a millisecond at least); "
            "60 if only agg is given.",
        ),
    ] = None,
    agg: Annotated[
        Aggregate | None,
        Query(
            description="Per window: mean (of numbers; the default with window_s), min or max (of numbers and "
            "booleans), last or count (of any point); without point, of the points it applies to."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Values per series at most.")] = 1000,
) -> TelemetryOut:
    """Values of points of devices over a time range, raw or aggregated per window."""
    if agg is not None and window_s is None:
        window_s = DEFAULT_WINDOW_S
    elif window_s is not None and agg is None:
        agg = DEFAULT_AGGREGATE
    end_ms = _ms(end, time.time_ns() // 1_000_000)
    start_ms = _ms(start, end_ms - DEFAULT_SPAN_MS)
    by_profile: dict[str, tuple[DeviceProfile, list[str]]] = {}
    for device in dict.fromkeys(device_id):
        try:
            await device_in_scope(hub, caller, device)
            _, profile = await hub.profile_for(device)
        except UnknownDevice as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
        by_profile.setdefault(profile.name, (profile, []))[1].append(device)
    wanted = list(dict.fromkeys(point or []))
    unknown = [p for p in wanted if not any(p in prof.points for prof, _ in by_profile.values())]
    if unknown:
        names = ", ".join(sorted(by_profile))
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"no point {', '.join(map(repr, unknown))} in profile {names!r}",
        )
    if agg is not None:
        _check_aggregate(agg, wanted, [profile for profile, _ in by_profile.values()])
    # an empty range holds nothing, nor one past what the stores hold (InfluxDB's int64 ns)
    first_ms, last_ms = max(start_ms, EARLIEST_MS), min(end_ms, LATEST_MS)
    series: list[SeriesOut] = []
    for profile, devices in by_profile.values():
        points = [p for p in wanted if p in profile.points] if wanted else list(profile.points)
        if agg is not None:  # all points by default: those the aggregate applies to
            points = [p for p in points if aggregate_applies(agg, profile.points[p].type)]
        if not points or first_ms >= last_ms:
            continue
        found = await hub.store.query(
            SeriesQuery(
                profile=profile.name,
                device_ids=tuple(devices),
                points=tuple(points),
                start_ms=first_ms,
                end_ms=last_ms,
                window_ms=int(window_s * 1000) if window_s else None,
                aggregate=agg,
                limit=limit,
            )
        )
        for s in found:
            spec = profile.points[s.point]
            values = s.values
            if spec.type == "bool" and agg != "count":  # SQLite has no booleans: 0/1
                values = [(t, bool(v)) for t, v in values]
            series.append(
                SeriesOut(device_id=s.device_id, point=s.point, unit=spec.unit, values=values)
            )
    return TelemetryOut(start_ms=start_ms, end_ms=end_ms, window_s=window_s, agg=agg, series=series)
