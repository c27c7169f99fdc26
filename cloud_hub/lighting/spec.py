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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

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

#: The IANA time zones this system knows (its tzdata).
ZONES = frozenset(available_timezones())
_CLOCK_SYNTAX = r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?"
#: An offset of at most 12 h: hours (0-11) and minutes (0-59), 12 h, or minutes (0-720).
_OFFSET_SYNTAX = (
    r"(?:(?:0?\d|1[01])h(?:[0-5]?\dm)?|12h(?:0{1,2}m)?|(?:\d{1,2}|[0-6]\d\d|7[01]\d|720)m)"
)
_CLOCK = re.compile(_CLOCK_SYNTAX)
_SUN = re.compile(rf"(sunrise|sunset)(?:([+-]){_OFFSET_SYNTAX})?")
_OFFSET = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?")
#: What ``parse_at`` takes, for the JSON Schema (ECMA-262 and Python read it alike).
AT_PATTERN = rf"^(?:{_CLOCK_SYNTAX}|(?:sunrise|sunset)(?:[+-]{_OFFSET_SYNTAX})?)$"


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
        return ClockTime(time(int(clock[1]), int(clock[2]), int(clock[3] or 0)))
    sun = _SUN.fullmatch(text)
    offset = _OFFSET.fullmatch(text[len(sun[1]) + 1 :]) if sun is not None else None
    if sun is None or offset is None:
        raise ValueError(
            f"'{text}' is neither a clock time HH:MM[:SS] nor sunrise/sunset with an optional "
            "offset of at most 12 h such as sunset+10m, sunrise-15m, sunset+1h"
        )
    event: Literal["sunrise", "sunset"] = "sunrise" if sun[1] == "sunrise" else "sunset"
    moved = timedelta(hours=int(offset[1] or 0), minutes=int(offset[2] or 0))
    return SunTime(event, -moved if sun[2] == "-" else moved)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; ValueError naming it when there is none such."""
    if name not in ZONES:  # exactly the schema's enum (ZoneInfo also opens other tzdata files)
        raise ValueError(f"unknown time zone '{name}' (an IANA name such as Asia/Shanghai)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(
            f"unknown time zone '{name}' (an IANA name such as Asia/Shanghai)"
        ) from exc


#: What a selector's validator requires, said in its JSON Schema: one criterion, not empty.
SELECTOR_NOT_EMPTY: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["device_ids"],
            "properties": {"device_ids": {"type": "array", "minItems": 1}},
        },
        {"required": ["site"], "properties": {"site": {"type": "string", "minLength": 1}}},
        {"required": ["profile"], "properties": {"profile": {"type": "string", "minLength": 1}}},
        {"required": ["tags"], "properties": {"tags": {"type": "object", "minProperties": 1}}},
    ]
}


class StrategySelector(BaseModel):
    """Which devices, as group commands select them: every given criterion must match."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=SELECTOR_NOT_EMPTY)

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
        json_schema_extra={"pattern": AT_PATTERN},
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


#: ``_sun_needs_a_place`` in its JSON Schema: no step at sunrise/sunset, or a lat and a lon.
SUN_NEEDS_A_PLACE: dict[str, Any] = {
    "anyOf": [
        {
            "properties": {
                "steps": {
                    "type": "array",
                    "items": {"properties": {"at": {"not": {"pattern": "^sun"}}}},
                }
            }
        },
        {
            "required": ["lat", "lon"],
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
        },
    ]
}


class StrategySpec(BaseModel):
    """A lighting strategy as it is written (``POST``/``PUT``) and stored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            **SUN_NEEDS_A_PLACE,
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
            ],
        },
    )

    name: str = Field(min_length=1, max_length=128)
    selector: StrategySelector
    timezone: str = Field(
        default="Asia/Shanghai",
        max_length=64,
        description="IANA time zone of the clock times.",
        json_schema_extra={"enum": [*sorted(ZONES)]},
    )
    lat: float | None = Field(default=None, ge=-90, le=90, description="For sun-relative steps.")
    lon: float | None = Field(default=None, ge=-180, le=180, description="For sun-relative steps.")
    steps: list[StepSpec] = Field(min_length=1, max_length=24)
    weekdays: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS),
        min_length=1,
        max_length=7,
        description="The days it runs (the local date of each step), mon ... sun.",
        json_schema_extra={"uniqueItems": True},
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
