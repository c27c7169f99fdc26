"""The lamp state each step of a strategy leaves (what a preview shows), from the profiles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloud_hub.lighting import Firing, states_after
from device_profiles import load_builtin_profile

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
POLE = {"smart_pole": load_builtin_profile("smart_pole")}


def _firing(hour: int, command: str, **params: Any) -> Firing:
    at = T0 + timedelta(hours=hour)
    return Firing(0, at, at, command, params)


def test_each_step_shows_on_or_off_and_the_level() -> None:
    night = [
        _firing(0, "set_dimming", level=100),
        _firing(6, "set_dimming", level=50),
        _firing(14, "lamp_off"),
        _firing(24, "lamp_on"),
        _firing(25, "set_dimming", level=0),
    ]
    assert [s["smart_pole"] for s in states_after(POLE, night)] == [
        {"dimming": 100, "lamp_on": True},
        {"dimming": 50, "lamp_on": True},
        {"dimming": 50, "lamp_on": False},  # off keeps the level for the next switch-on
        {"dimming": 50, "lamp_on": True},
        {"dimming": 50, "lamp_on": False},  # level 0 is off
    ]


def test_earlier_steps_give_the_state_a_window_starts_from() -> None:
    earlier = [_firing(-10, "set_dimming", level=30)]
    [state] = states_after(POLE, [_firing(0, "lamp_off")], earlier)
    assert state == {"smart_pole": {"dimming": 30, "lamp_on": False}}


def test_a_profile_that_refuses_a_step_keeps_its_state() -> None:
    profiles = {**POLE, "barrier_gate": load_builtin_profile("barrier_gate")}
    [state] = states_after(profiles, [_firing(0, "set_dimming", level=40)])
    assert state == {"smart_pole": {"dimming": 40, "lamp_on": True}, "barrier_gate": {}}
