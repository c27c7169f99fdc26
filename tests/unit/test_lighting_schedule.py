"""Lighting strategies without a hub: parsing and validation of steps, and the schedule math
(clock and sun steps, weekdays, DST changes, polar days, the step in effect)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from pydantic import ValidationError

from cloud_hub.lighting import (
    LightingSettings,
    StrategySpec,
    firings_between,
    in_effect,
    next_firing,
    parse_at,
    sun_event,
)
from cloud_hub.lighting.spec import ClockTime, SunTime
from cloud_hub.lighting.sun import NoSunEvent
from device_profiles import format_location

pytestmark = pytest.mark.unit

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def spec(**fields: Any) -> StrategySpec:
    body: dict[str, Any] = {
        "name": "ring road",
        "selector": {"site": "ring-road"},
        "steps": [{"at": "23:30", "command": "set_dimming", "params": {"level": 50}}],
    }
    body.update(fields)
    return StrategySpec.model_validate(body)


def problems(**fields: Any) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    return [f"{format_location(list(e['loc']))}: {e['msg']}" for e in caught.value.errors()]


# -- parsing and validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("23:30", ClockTime(datetime(2000, 1, 1, 23, 30).time())),
        ("06:05:30", ClockTime(datetime(2000, 1, 1, 6, 5, 30).time())),
        ("sunset", SunTime("sunset", timedelta())),
        ("sunset+10m", SunTime("sunset", timedelta(minutes=10))),
        ("sunrise-15m", SunTime("sunrise", timedelta(minutes=-15))),
        ("sunset+1h", SunTime("sunset", timedelta(hours=1))),
        ("sunrise-1h30m", SunTime("sunrise", timedelta(hours=-1, minutes=-30))),
    ],
)
def test_at_parses_clock_times_and_sun_events_with_offsets(text: str, expected: object) -> None:
    assert parse_at(text) == expected


@pytest.mark.parametrize(
    "text", ["24:00", "7:30", "23:60", "sunset+", "sunset+10", "sunset 10m", "noon", "sunset+13h"]
)
def test_bad_at_values_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=text.replace("+", r"\+")):
        parse_at(text)


def test_errors_name_the_field() -> None:
    steps = [
        {"at": "18:00", "command": "lamp_on"},
        {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
        {"at": "sunset+1x", "command": "lamp_off"},
    ]
    found = problems(steps=steps)
    assert len(found) == 1 and found[0].startswith(
        "steps[2].at: Value error, 'sunset+1x' is neither"
    )
    assert problems(timezone="Mars/Olympus")[0].startswith(
        "timezone: Value error, unknown time zone 'Mars/Olympus'"
    )
    assert problems(steps=[{"at": "18:00", "command": "lamp_on", "colour": "red"}]) == [
        "steps[0].colour: Extra inputs are not permitted"
    ]
    assert "each day at most once" in problems(weekdays=["mon", "mon"])[0]
    assert problems(weekdays=["monday"])[0].startswith("weekdays[0]: Input should be 'mon'")
    assert "give at least one of" in problems(selector={})[0]
    assert problems(lat=91, lon=0)[0].startswith("lat: Input should be less than or equal to 90")


def test_sun_steps_need_a_place() -> None:
    steps = [
        {"at": "18:00", "command": "lamp_on"},
        {"at": "sunrise-15m", "command": "lamp_off"},
    ]
    found = problems(steps=steps)
    assert "steps[1].at: 'sunrise-15m' needs the strategy's lat and lon" in found[0]
    assert spec(steps=steps, lat=31.23, lon=121.47).lat == 31.23


def test_defaults_are_every_day_in_shanghai_and_weekdays_are_kept_in_order() -> None:
    strategy = spec()
    assert strategy.timezone == "Asia/Shanghai"
    assert strategy.weekdays == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    assert spec(weekdays=["sun", "mon"]).weekdays == ["mon", "sun"]


# -- sun times ----------------------------------------------------------------------------


def test_sun_times_match_published_values() -> None:
    """astral's documentation example, London on 2009-04-22: sunrise 04:50, sunset 19:08 UTC
    (timeanddate.com: 05:51 and 20:08 BST); Shanghai on the 2026 June solstice: sunset
    19:01 CST."""
    london = ZoneInfo("Europe/London")
    rise = sun_event("sunrise", 51.5, -0.116, date(2009, 4, 22), london)
    assert abs(rise - datetime(2009, 4, 22, 4, 50, tzinfo=UTC)) < timedelta(minutes=2)
    down = sun_event("sunset", 51.5, -0.116, date(2009, 4, 22), london)
    assert abs(down - datetime(2009, 4, 22, 19, 8, tzinfo=UTC)) < timedelta(minutes=2)
    shanghai = sun_event("sunset", 31.23, 121.47, date(2026, 6, 21), SHANGHAI)
    expected = datetime(2026, 6, 21, 19, 1, tzinfo=SHANGHAI)
    assert abs(shanghai - expected) < timedelta(minutes=2)


def test_a_polar_day_has_no_sunset() -> None:
    with pytest.raises(NoSunEvent, match="no sunset on 2026-06-21"):
        sun_event("sunset", 78.22, 15.65, date(2026, 6, 21), ZoneInfo("Arctic/Longyearbyen"))


# -- the schedule -------------------------------------------------------------------------


def test_a_night_in_shanghai() -> None:
    strategy = spec(
        lat=31.23,
        lon=121.47,
        steps=[
            {"at": "sunset+10m", "command": "set_dimming", "params": {"level": 100}},
            {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
            {"at": "sunrise-15m", "command": "lamp_off"},
        ],
    )
    start = datetime(2026, 12, 1, 12, 0, tzinfo=SHANGHAI)
    firings = firings_between(strategy, start, start + timedelta(hours=24)).firings
    assert [(f.step, f.local.strftime("%d %H:%M")) for f in firings] == [
        (0, "01 17:00"),  # sunset in Shanghai on 1 December: 16:50
        (1, "01 23:30"),
        (2, "02 06:20"),  # sunrise on 2 December: 06:35
    ]
    assert firings[1].at == datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert firings[0].command == "set_dimming" and firings[0].params == {"level": 100}
    # the window is (start, end]: a firing exactly at start belongs to the window before
    at_2330 = firings[1].at
    assert [f.step for f in firings_between(strategy, at_2330, at_2330).firings] == []
    assert [
        f.step for f in firings_between(strategy, at_2330 - timedelta(seconds=1), at_2330).firings
    ] == [1]


def test_next_firing_and_the_step_in_effect() -> None:
    strategy = spec(
        steps=[
            {"at": "18:00", "command": "lamp_on"},
            {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
        ]
    )
    evening = datetime(2026, 12, 1, 20, 0, tzinfo=SHANGHAI)
    upcoming = next_firing(strategy, evening)
    assert upcoming is not None and upcoming.local == datetime(2026, 12, 1, 23, 30, tzinfo=SHANGHAI)
    current = in_effect(strategy, evening)
    assert current is not None and current.step == 0
    # after midnight, yesterday's last step is still the one in effect
    small_hours = datetime(2026, 12, 2, 1, 0, tzinfo=SHANGHAI)
    current = in_effect(strategy, small_hours)
    assert current is not None and current.step == 1 and current.local.day == 1


def test_weekdays_select_the_local_dates() -> None:
    strategy = spec(weekdays=["sat", "sun"], steps=[{"at": "01:00", "command": "lamp_off"}])
    start = datetime(2026, 11, 30, tzinfo=SHANGHAI)  # a Monday
    firings = firings_between(strategy, start, start + timedelta(days=7)).firings
    # 01:00 local on Saturday is 17:00 UTC on Friday: the local date decides
    assert [f.local.strftime("%a %H:%M") for f in firings] == ["Sat 01:00", "Sun 01:00"]
    assert firings[0].at.weekday() == 4


def test_clock_steps_keep_local_time_across_the_dst_changes_in_berlin() -> None:
    strategy = spec(
        timezone="Europe/Berlin",
        steps=[
            {"at": "02:30", "command": "set_dimming", "params": {"level": 30}},
            {"at": "23:30", "command": "set_dimming", "params": {"level": 50}},
        ],
    )
    # spring: on 29 March 2026 clocks jump from 02:00 to 03:00 CEST
    spring = firings_between(
        strategy, datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 3, 30, 12, tzinfo=UTC)
    ).firings
    assert [(f.step, f.at.strftime("%d %H:%M"), f.local.strftime("%H:%M%z")) for f in spring] == [
        (1, "28 22:30", "23:30+0100"),
        (0, "29 01:30", "03:30+0200"),  # 02:30 does not exist: at the jump, 03:30 CEST
        (1, "29 21:30", "23:30+0200"),
        (0, "30 00:30", "02:30+0200"),
    ]
    # autumn: on 25 October 2026 02:00-03:00 happens twice; 02:30 fires once, the first time
    autumn = firings_between(
        strategy, datetime(2026, 10, 24, 12, tzinfo=UTC), datetime(2026, 10, 26, 12, tzinfo=UTC)
    ).firings
    assert [(f.step, f.at.strftime("%d %H:%M"), f.local.strftime("%H:%M%z")) for f in autumn] == [
        (1, "24 21:30", "23:30+0200"),
        (0, "25 00:30", "02:30+0200"),
        (1, "25 22:30", "23:30+0100"),
        (0, "26 01:30", "02:30+0100"),
    ]
    # a whole week across the change: one firing per step and day, 24 h apart except once
    week = firings_between(
        strategy, datetime(2026, 10, 21, tzinfo=UTC), datetime(2026, 10, 28, tzinfo=UTC)
    ).firings
    late = [f.at for f in week if f.step == 1]
    gaps = {(b - a) for a, b in itertools.pairwise(late)}
    assert gaps == {timedelta(hours=24), timedelta(hours=25)}


def test_sun_steps_follow_dst_in_berlin() -> None:
    strategy = spec(
        timezone="Europe/Berlin",
        lat=52.52,
        lon=13.405,
        steps=[{"at": "sunset", "command": "lamp_on"}],
    )
    firings = firings_between(
        strategy, datetime(2026, 3, 28, tzinfo=UTC), datetime(2026, 3, 30, 12, tzinfo=UTC)
    ).firings
    # the sun sets about 2 min later each day; the clock jumps an hour in between
    before, after = firings[0], firings[1]
    assert before.local.utcoffset() == timedelta(hours=1)
    assert after.local.utcoffset() == timedelta(hours=2)
    assert timedelta(minutes=0) < after.at - before.at - timedelta(hours=24) < timedelta(minutes=4)
    assert after.local.hour - before.local.hour == 1


def test_days_without_the_sun_event_are_skipped_and_reported() -> None:
    strategy = spec(
        timezone="Arctic/Longyearbyen",
        lat=78.22,
        lon=15.65,
        steps=[
            {"at": "sunset+10m", "command": "lamp_on"},
            {"at": "23:00", "command": "set_dimming", "params": {"level": 50}},
        ],
    )
    start = datetime(2026, 6, 20, 12, tzinfo=UTC)
    schedule = firings_between(strategy, start, start + timedelta(hours=48))
    assert {f.step for f in schedule.firings} == {1}  # the clock step still happens
    assert {s.step for s in schedule.skipped} == {0}
    assert [s.day for s in schedule.skipped] == [
        date(2026, 6, 20),
        date(2026, 6, 21),
        date(2026, 6, 22),
    ]
    assert "always above the horizon" in schedule.skipped[0].reason


def test_the_documented_example_and_defaults_are_valid() -> None:
    """docs/operations.md's strategy and its ``lighting:`` defaults, as written there."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Lighting strategies", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    strategy = StrategySpec.model_validate(example)
    assert [step.at for step in strategy.steps] == ["sunset+10m", "23:30", "sunrise-15m"]
    defaults = yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])
    assert LightingSettings.model_validate(defaults["lighting"]) == LightingSettings()
