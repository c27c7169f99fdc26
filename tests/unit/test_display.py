"""Values shown to people: the profile's precision, units and enum labels (one formatter for
every view); the profile's ``precision`` is validated at load time with its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from device_profiles import ProfileError, builtin_profile_names, load_builtin_profile, parse_profile
from device_profiles.display import display_precision, format_value, show_values

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_values_are_rounded_to_the_profile_precision_with_units() -> None:
    meter = load_builtin_profile("electricity_meter")
    shown = show_values(meter, {"frequency": 50.0123405457, "active_power": 2050.6994628906})
    assert [(s.name, s.text) for s in shown] == [  # in the profile's point order
        ("active_power", "2050.7 W"),
        ("frequency", "50.01 Hz"),
    ]
    assert shown[0].value == 2050.6994628906  # the value as read stays beside the text
    assert format_value(meter.points["power_factor"], -0.0001) == "0.000"  # no "-0.000"


def test_enum_values_show_their_label() -> None:
    gate = load_builtin_profile("barrier_gate")
    assert format_value(gate.points["state"], 2) == "open (2)"
    assert format_value(gate.points["state"], 9) == "9 (unknown)"
    [shown] = show_values(gate, {"state": 4})
    assert (shown.text, shown.label) == ("fault (4)", "fault")


def test_defaults_follow_the_data_type_and_scale() -> None:
    pole = load_builtin_profile("smart_pole")
    water = load_builtin_profile("water_meter")
    gate = load_builtin_profile("barrier_gate")
    assert display_precision(gate.points["open_count"]) == 0  # an integer
    data = yaml.safe_load((ROOT / "device_profiles/profiles/water_meter.yaml").read_text())
    del data["points"]["flow_rate"]["precision"]
    assert display_precision(parse_profile(data, "w").points["flow_rate"]) == 2  # scale 0.01
    assert display_precision(water.points["total_volume"]) == 3
    assert format_value(pole.points["lamp_on"], True) == "true"
    assert format_value(pole.points["dimming"], 40) == "40%"
    assert format_value(pole.points["temperature"], 23.849) == "23.8 °C"


def test_points_the_profile_does_not_know_are_shown_as_given() -> None:
    pole = load_builtin_profile("smart_pole")
    shown = show_values(pole, {"extra": 1.23456, "voltage": 229.84}, {"extra": "mA"})
    assert [(s.name, s.text) for s in shown] == [("voltage", "229.8 V"), ("extra", "1.23456 mA")]
    assert [s.text for s in show_values(None, {"x": 3}, {"x": "V"})] == ["3 V"]


@pytest.mark.parametrize("name", builtin_profile_names())
def test_shipped_profiles_declare_a_precision_for_every_fractional_point(name: str) -> None:
    for point_name, point in load_builtin_profile(name).points.items():
        if point.is_numeric and not point.is_integral and point.enum is None:
            assert point.precision is not None, f"{name}.{point_name}"


@pytest.mark.parametrize(
    ("point", "precision", "message"),
    [
        ("voltage", -1, "points.voltage.precision: Input should be greater than or equal to 0"),
        ("voltage", 12, "points.voltage.precision: Input should be less than or equal to 9"),
        ("voltage", "x", "points.voltage.precision: Input should be a valid integer"),
        ("lamp_on", 1, "points.lamp_on: precision applies to numbers, not to bool points"),
    ],
)
def test_a_bad_precision_is_refused_with_its_path(point: str, precision: Any, message: str) -> None:
    data = yaml.safe_load((ROOT / "device_profiles/profiles/smart_pole.yaml").read_text())
    data["points"][point]["precision"] = precision
    with pytest.raises(ProfileError) as info:
        parse_profile(data, "pole.yaml")
    assert any(issue.startswith(message) for issue in info.value.issues), info.value.issues
