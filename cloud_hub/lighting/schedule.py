"""When a strategy's steps happen: pure functions of the strategy and instants (no hub, no I/O).

Each step happens once per local date of the strategy's zone on which the strategy runs
(``weekdays``): a clock step at that wall-clock time, a sun step at that date's sunrise or
sunset plus its offset (which may move it onto the next or previous date). DST: a clock time
that does not exist that day (the hour skipped in spring) happens at the instant the clocks
jump (02:30 in Berlin on the last Sunday of March is 03:30 CEST); one that exists twice (the
hour repeated in autumn) happens at its first occurrence only. A sun step on a date without
that sun event (polar day or night) is skipped that day and reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cloud_hub.lighting.spec import WEEKDAYS, ClockTime, StrategySpec
from cloud_hub.lighting.sun import NoSunEvent, sun_event

__all__ = ["Firing", "Schedule", "Skipped", "firings_between", "in_effect", "next_firing"]

#: how far ``in_effect`` and ``next_firing`` look by default (a week and a day)
DEFAULT_REACH = timedelta(days=8)


@dataclass(frozen=True)
class Firing:
    """One step of a strategy at one instant."""

    step: int
    at: datetime  # UTC
    local: datetime  # the same instant in the strategy's zone
    command: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    """A sun step that does not happen on a local date (no sunrise/sunset there that day)."""

    step: int
    day: date
    reason: str


@dataclass(frozen=True)
class Schedule:
    firings: list[Firing]
    skipped: list[Skipped]


def _instants(spec: StrategySpec, day: date) -> tuple[list[tuple[int, datetime]], list[Skipped]]:
    """The UTC instant of each step on the local date ``day`` (if the strategy runs then)."""
    if WEEKDAYS[day.weekday()] not in spec.weekdays:
        return [], []
    tz = spec.zone
    found: list[tuple[int, datetime]] = []
    skipped: list[Skipped] = []
    for index, step in enumerate(spec.steps):
        when = step.when
        if isinstance(when, ClockTime):
            # fold=0: the first of a repeated time; a skipped time maps to the jump
            local = datetime.combine(day, when.at, tzinfo=tz)
            found.append((index, local.astimezone(UTC)))
            continue
        lat, lon = spec.lat, spec.lon
        if lat is None or lon is None:  # refused by the spec's validator: never here
            skipped.append(Skipped(index, day, "the strategy has no lat/lon"))
            continue
        try:
            event = sun_event(when.event, lat, lon, day, tz)
        except NoSunEvent as exc:
            skipped.append(Skipped(index, day, exc.reason))
            continue
        found.append((index, event + when.offset))
    return found, skipped


def firings_between(spec: StrategySpec, start: datetime, end: datetime) -> Schedule:
    """The firings with ``start < at <= end`` in time order (aware datetimes, any zone), and
    the sun steps skipped on the local dates concerned."""
    tz = spec.zone
    firings: list[Firing] = []
    skipped: list[Skipped] = []
    # a step's offset (at most 12 h) and the zone's offset can move it a day either way
    day = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date() + timedelta(days=1)
    while day <= last:
        instants, missing = _instants(spec, day)
        for index, at in instants:
            if start < at <= end:
                step = spec.steps[index]
                firings.append(Firing(index, at, at.astimezone(tz), step.command, step.params))
        skipped += [s for s in missing if start.astimezone(tz).date() <= s.day]
        day += timedelta(days=1)
    firings.sort(key=lambda f: (f.at, f.step))
    return Schedule(firings, [s for s in skipped if s.day <= end.astimezone(tz).date()])


def next_firing(
    spec: StrategySpec, after: datetime, within: timedelta = DEFAULT_REACH
) -> Firing | None:
    """The first firing after ``after`` (within ``within``), or None."""
    firings = firings_between(spec, after, after + within).firings
    return firings[0] if firings else None


def in_effect(
    spec: StrategySpec, now: datetime, within: timedelta = DEFAULT_REACH
) -> Firing | None:
    """The latest firing at or before ``now`` (within ``within`` back): the step whose
    command the lamps should be following now. None if there is none."""
    firings = firings_between(spec, now - within, now).firings
    return firings[-1] if firings else None
