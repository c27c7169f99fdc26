"""What a lighting strategy says: which poles, in which time zone, which steps on which days.

A step's ``at`` is a local clock time of the strategy's zone (``"23:30"``, ``"06:05:30"``) or a
sun event with an optional offset (``"sunset"``, ``"sunset+10m"``, ``"sunrise-15m"``,
``"sunset+1h"``, ``"sunrise-1h30m"``; at most 12 h either way). Sun events need the strategy's
``lat`` and ``lon``. Everything is checked when the strategy is written, with the field named:
``steps[2].at: ...``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "WEEKDAYS",
    "ClockTime",
    "StepSpec",
    "StrategySelector",
    "StrategySpec",
    "SunTime",
    "When",
    "parse_at",
    "zone",
]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
#: Day names in ISO order (Monday first), as ``weekdays`` takes them.
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_OFFSET = timedelta(hours=12)

_CLOCK = re.compile(r"(?P<h>[01]\d|2[0-3]):(?P<m>[0-5]\d)(?::(?P<s>[0-5]\d))?")
_SUN = re.compile(
    r"(?P<event>sunrise|sunset)"
    r"(?:(?P<sign>[+-])(?=\d)(?:(?P<h>\d{1,2})h)?(?:(?P<m>\d{1,3})m)?)?"
)


@dataclass(frozen=True)
class ClockTime:
    """A local clock time of the strategy's zone."""

    at: time


@dataclass(frozen=True)
class SunTime:
    """Sunrise or sunset at the strategy's place, moved by ``offset``."""

    event: Literal["sunrise", "sunset"]
    offset: timedelta


When = ClockTime | SunTime


def parse_at(text: str) -> When:
    """``"23:30"``, ``"23:30:15"``, ``"sunset"``, ``"sunset+10m"``, ``"sunrise-1h30m"``;
    ValueError saying what is expected otherwise."""
    clock = _CLOCK.fullmatch(text)
    if clock is not None:
        return ClockTime(time(int(clock["h"]), int(clock["m"]), int(clock["s"] or 0)))
    sun = _SUN.fullmatch(text)
    if sun is None or (sun["sign"] and not (sun["h"] or sun["m"])):
        raise ValueError(
            f"'{text}' is neither a clock time HH:MM[:SS] nor sunrise/sunset with an optional "
            "offset such as sunset+10m, sunrise-15m, sunset+1h"
        )
    offset = timedelta(hours=int(sun["h"] or 0), minutes=int(sun["m"] or 0))
    if offset > MAX_OFFSET:
        raise ValueError(f"'{text}': the offset may be at most 12 h")
    event: Literal["sunrise", "sunset"] = "sunrise" if sun["event"] == "sunrise" else "sunset"
    return SunTime(event, -offset if sun["sign"] == "-" else offset)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it when there is none such."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(
            f"unknown time zone '{name}' (an IANA name such as Asia/Shanghai)"
        ) from exc


class StrategySelector(BaseModel):
    """Which devices, as group commands select them: every given criterion must match."""

    model_config = ConfigDict(extra="forbid")

    device_ids: list[str] | None = Field(default=None, max_length=10_000)
    site: str | None = Field(default=None, max_length=64)
    profile: str | None = Field(default=None, max_length=64)
    tags: dict[str, str] | None = None

    @model_validator(mode="after")
    def _not_everything(self) -> StrategySelector:
        if not any((self.device_ids, self.site, self.profile, self.tags)):
            raise ValueError("give at least one of device_ids, site, profile, tags")
        return self


class StepSpec(BaseModel):
    """One step: at ``at``, send ``command`` with ``params`` to the selected devices."""

    model_config = ConfigDict(extra="forbid")

    at: str = Field(
        max_length=32,
        description="HH:MM[:SS] local time, or sunrise/sunset with an optional offset "
        "(sunset+10m, sunrise-15m, sunset+1h).",
    )
    command: str = Field(min_length=1, max_length=64, description="A command of the profile.")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _parsable(cls, value: str) -> str:
        parse_at(value)
        return value

    @property
    def when(self) -> When:
        return parse_at(self.at)


class StrategySpec(BaseModel):
    """A lighting strategy as it is written (``POST``/``PUT``) and stored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "ring road nights",
                    "selector": {"site": "ring-road"},
                    "timezone": "Asia/Shanghai",
                    "lat": 31.23,
                    "lon": 121.47,
                    "steps": [
                        {"at": "sunset+10m", "command": "set_dimming", "params": {"level": 100}},
                        {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
                        {"at": "sunrise-15m", "command": "lamp_off", "params": {}},
                    ],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=128)
    selector: StrategySelector
    timezone: str = Field(
        default="Asia/Shanghai", max_length=64, description="IANA time zone of the clock times."
    )
    lat: float | None = Field(default=None, ge=-90, le=90, description="For sun-relative steps.")
    lon: float | None = Field(default=None, ge=-180, le=180, description="For sun-relative steps.")
    steps: list[StepSpec] = Field(min_length=1, max_length=24)
    weekdays: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        min_length=1,
        max_length=7,
        description="The days it runs (the local date of each step), mon ... sun.",
    )
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("weekdays")
    @classmethod
    def _distinct(cls, value: list[Weekday]) -> list[Weekday]:
        if len(set(value)) != len(value):
            raise ValueError("each day at most once")
        return sorted(value, key=WEEKDAYS.index)

    @model_validator(mode="after")
    def _sun_needs_a_place(self) -> StrategySpec:
        sun = [i for i, step in enumerate(self.steps) if isinstance(step.when, SunTime)]
        if sun and (self.lat is None or self.lon is None):
            at = self.steps[sun[0]].at
            raise ValueError(f"steps[{sun[0]}].at: '{at}' needs the strategy's lat and lon")
        return self

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.timezone)
