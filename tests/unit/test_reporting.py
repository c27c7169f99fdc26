"""Report by exception: deadband, any-change for booleans, max silent interval."""

from __future__ import annotations

import pytest

from device_profiles import load_builtin_profile
from edge_agent.polling.devices import DeviceRuntime
from edge_agent.polling.reporting import ChangeFilter
from edge_agent.settings import DeviceConfig

pytestmark = pytest.mark.unit

POLE = load_builtin_profile("smart_pole")  # voltage has a deadband of 0.5 V


def test_first_values_are_always_reported() -> None:
    f = ChangeFilter(POLE, max_silent_s=60)
    assert f.select({"voltage": 230.0, "door_open": False}, 0) == {
        "voltage": 230.0,
        "door_open": False,
    }


def test_changes_within_the_deadband_are_suppressed() -> None:
    f = ChangeFilter(POLE, max_silent_s=60)
    f.select({"voltage": 230.0}, 0)
    assert f.select({"voltage": 230.4}, 1000) == {}
    assert f.select({"voltage": 230.6}, 2000) == {"voltage": 230.6}
    assert f.suppressed == 1


def test_points_without_deadband_report_any_change_and_bools_too() -> None:
    f = ChangeFilter(POLE, max_silent_s=60)
    f.select({"power": 60.0, "door_open": False}, 0)
    assert f.select({"power": 60.0, "door_open": False}, 1000) == {}
    assert f.select({"power": 60.1, "door_open": True}, 2000) == {"power": 60.1, "door_open": True}


def test_silent_points_are_reported_after_max_silent() -> None:
    f = ChangeFilter(POLE, max_silent_s=10)
    f.select({"power": 60.0}, 0)
    assert f.select({"power": 60.0}, 9_999) == {}
    assert f.select({"power": 60.0}, 10_000) == {"power": 60.0}


def test_disabled_filter_reports_every_poll() -> None:
    f = ChangeFilter(POLE, max_silent_s=60, enabled=False)
    f.select({"power": 60.0}, 0)
    assert f.select({"power": 60.0}, 1) == {"power": 60.0}


def _runtime(**config: object) -> DeviceRuntime:
    settings = DeviceConfig.model_validate(
        {
            "device_id": "pole-1",
            "profile": "smart_pole",
            "connection": {"transport": "modbus_tcp", "host": "127.0.0.1", "port": 1502},
            **config,
        }
    )
    return DeviceRuntime.from_config(settings)


def test_the_birth_states_the_poll_plans_reading_interval() -> None:
    """At least one reading every shortest poll interval; on change, every max_silent_s."""
    shortest = min(POLE.poll_interval(name) for name in POLE.points)
    assert _runtime(report_on_change=False).info.reading_interval_s == shortest
    assert _runtime(report_on_change=False, poll_interval_s=2.5).reading_interval_s == 2.5
    assert _runtime(max_silent_s=90).info.reading_interval_s == max(shortest, 90)
    assert _runtime(poll_interval_s=300, max_silent_s=60).reading_interval_s == 300
