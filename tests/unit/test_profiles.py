"""Profile schema v1: shipped profiles load, bad profiles are refused with path and reason."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_profiles import (
    CommandRejected,
    ProfileError,
    builtin_profile_names,
    load_builtin_profile,
    load_profile,
    parse_profile,
    profile_json_schema,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _pole() -> dict[str, Any]:
    text = (ROOT / "device_profiles/profiles/smart_pole.yaml").read_text()
    return yaml.safe_load(text)


def _issues(data: dict[str, Any]) -> str:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, "test.yaml")
    return "\n".join(info.value.issues)


@pytest.mark.parametrize("name", builtin_profile_names())
def test_builtin_profiles_load(name: str) -> None:
    assert load_builtin_profile(name).name == name


def test_smart_pole_has_what_the_issue_asks() -> None:
    pole = load_builtin_profile("smart_pole")
    for point in [
        "lamp_on",
        "dimming",
        "voltage",
        "current",
        "power",
        "energy",
        "illuminance",
        "tilt",
        "door_open",
        "one_key_alarm",
        "temperature",
        "humidity",
        "pm25",
        "noise",
    ]:
        assert point in pole.points
    assert {"set_dimming", "lamp_on", "lamp_off"} <= set(pole.commands)
    assert pole.points["dimming"].writable and pole.points["dimming"].max == 100


def test_committed_json_schema_is_current() -> None:
    committed = (ROOT / "device_profiles/schema/device-profile-v1.json").read_text()
    assert committed == profile_json_schema(), (
        "run: iotctl profiles schema > device_profiles/schema/device-profile-v1.json"
    )
    assert json.loads(committed)["properties"]["schema_version"]


def test_unknown_key_is_refused_with_its_path() -> None:
    data = _pole()
    data["points"]["dimming"]["modbus"]["adress"] = 3
    assert "points.dimming.modbus.adress: Extra inputs are not permitted" in _issues(data)


def test_address_out_of_range_names_the_field() -> None:
    data = _pole()
    data["points"]["voltage"]["modbus"]["address"] = 70000
    issues = _issues(data)
    assert "points.voltage.modbus.address" in issues
    assert "70000" in issues


def test_overlapping_registers_are_refused() -> None:
    data = _pole()
    data["points"]["current"]["modbus"]["address"] = 3  # power is a uint32 at 2-3
    assert "points.power.modbus: overlaps point 'current' at input_register 3" in _issues(data)


def test_bits_of_one_register_may_share_it_but_not_a_bit() -> None:
    data = _pole()
    data["points"]["supply_fault"]["modbus"]["bit"] = 0
    assert (
        "points.supply_fault.modbus: overlaps point 'lamp_fault' at input_register 13"
        in _issues(data)
    )


def test_register_count_must_match_type() -> None:
    data = _pole()
    data["points"]["power"]["modbus"]["length"] = 1
    assert "'length' is only for strings; a uint32 always occupies 2 register(s)" in _issues(data)


def test_writable_input_register_is_refused() -> None:
    data = _pole()
    data["points"]["voltage"]["writable"] = True
    assert "points.voltage: input_register points are read-only" in _issues(data)


def test_command_may_only_write_writable_points() -> None:
    data = _pole()
    data["commands"]["lamp_on"]["writes"][0]["point"] = "voltage"
    assert "commands.lamp_on.writes[0].point: point 'voltage' is not writable" in _issues(data)


def test_command_parameter_range_must_fit_the_point() -> None:
    data = _pole()
    data["commands"]["set_dimming"]["params"]["level"]["max"] = 120
    assert "commands.set_dimming.params.level: must declare max <= 100" in _issues(data)


def test_command_constant_out_of_range_is_refused() -> None:
    data = _pole()
    data["commands"]["full"] = {"writes": [{"point": "dimming", "value": 150}]}
    assert "commands.full.writes[0].value: 150 is above the maximum 100%" in _issues(data)


def test_alarm_on_unknown_point_is_refused() -> None:
    data = _pole()
    data["alarms"]["x"] = {"point": "nope", "op": ">", "value": 1, "severity": "minor"}
    assert "alarms.x.point: unknown point 'nope'" in _issues(data)


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("schema_version: 1\nname: a\nname: b\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert "duplicate key 'name'" in str(info.value)
    assert "line 3" in str(info.value)


def test_resolve_command_accepts_and_refuses_precisely() -> None:
    pole = load_builtin_profile("smart_pole")
    writes = pole.resolve_command("set_dimming", {"level": 40})
    assert [(w.point, w.value) for w in writes] == [("dimming", 40), ("lamp_on", True)]
    cases = {
        ("set_dimming", (("level", 140),)): "above the maximum 100%",
        ("set_dimming", (("level", -1),)): "below the minimum 0%",
        ("set_dimming", (("level", 10**400),)): "above the maximum 100%",  # no OverflowError
        ("set_dimming", (("level", -(10**400)),)): "below the minimum 0%",
        ("set_dimming", (("level", "40"),)): "must be an int",
        ("set_dimming", (("level", True),)): "must be an int",
        ("set_dimming", ()): "needs parameter 'level'",
        ("set_dimming", (("level", 4), ("speed", 1))): "takes no parameter 'speed'",
        ("explode", ()): "unknown command 'explode'",
    }
    for (name, params), reason in cases.items():
        with pytest.raises(CommandRejected, match=reason):
            pole.resolve_command(name, dict(params))


def test_check_value_refuses_an_integer_beyond_the_float_range_precisely() -> None:
    interval = load_builtin_profile("manhole_cover").points["report_interval"]
    with pytest.raises(CommandRejected, match="above the maximum 3600s"):
        interval.check_value(10**400)
    with pytest.raises(CommandRejected, match="expects a finite number"):
        interval.check_value(math.inf)


def test_raw_and_engineering_conversions() -> None:
    pole = load_builtin_profile("smart_pole")
    voltage = pole.points["voltage"]
    assert voltage.from_raw(2305) == pytest.approx(230.5)
    assert voltage.to_raw(230.5) == 2305
    assert pole.points["dimming"].from_raw(40) == 40
    assert isinstance(pole.points["dimming"].from_raw(40), int)
    assert pole.points["tilt"].from_raw(-12) == pytest.approx(-1.2)


def test_profiles_are_immutable() -> None:
    pole = load_builtin_profile("smart_pole")
    data = copy.deepcopy(pole.model_dump())
    with pytest.raises(Exception, match="frozen"):
        pole.points["dimming"].max = 1000  # type: ignore[misc]
    assert parse_profile(data, "copy") == pole


def test_points_carry_exactly_their_transports_location() -> None:
    data = _pole()
    data["points"]["pm25"] = {"type": "uint16", "hj212": {"code": "a34004"}}
    assert "points.pm25: a modbus profile's points need 'modbus', not 'hj212'" in _issues(data)
    data = _pole()
    data["points"]["pm25"]["coap"] = {"path": "/pm25"}
    assert (
        "points.pm25: needs exactly one location: 'modbus', 'hj212' or 'coap' (has modbus, coap)"
        in _issues(data)
    )
    data = _pole()
    del data["points"]["pm25"]["modbus"]
    assert "points.pm25: needs exactly one location" in _issues(data)


def _gate() -> dict[str, Any]:
    text = (ROOT / "device_profiles/profiles/barrier_gate.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def test_a_momentary_write_names_the_point_confirming_it() -> None:
    gate = load_builtin_profile("barrier_gate")
    [write] = gate.resolve_command("open", {})
    assert write.confirm is not None
    assert (write.confirm.point, write.confirm.values) == ("state", [1, 2])


@pytest.mark.parametrize(
    ("confirm", "issue"),
    [
        (
            {"point": "status", "values": [1]},
            "commands.open.writes[0].confirm.point: unknown point 'status'",
        ),
        (
            {"point": "state", "values": [1, 7]},
            "commands.open.writes[0].confirm.values[1]: point 'state' 7 is not one of",
        ),
        (
            {"point": "state", "values": [True]},
            "commands.open.writes[0].confirm.values[0]: point 'state' expects a number",
        ),
        ({"point": "state", "values": []}, "commands.open.writes[0].confirm.values: List should"),
    ],
)
def test_bad_confirmations_are_refused_with_their_path(confirm: dict[str, Any], issue: str) -> None:
    data = _gate()
    data["commands"]["open"]["writes"][0]["confirm"] = confirm
    assert issue in _issues(data)


def test_a_confirmation_is_only_for_momentary_points() -> None:
    data = _pole()
    data["commands"]["lamp_on"]["writes"][0]["confirm"] = {"point": "power", "values": [150]}
    assert "commands.lamp_on.writes[0].confirm: only a write to a momentary point" in _issues(data)


def test_set_dimming_means_what_lighting_controllers_mean() -> None:
    """uCIFI / TALQ: a level of 0 is off, n is on at n % (the relay follows the level)."""
    pole = load_builtin_profile("smart_pole")

    def writes(level: int) -> list[tuple[str, object]]:
        return [(w.point, w.value) for w in pole.resolve_command("set_dimming", {"level": level})]

    assert writes(100) == [("dimming", 100), ("lamp_on", True)]
    assert writes(1) == [("dimming", 1), ("lamp_on", True)]
    assert writes(0) == [("lamp_on", False)]


@pytest.mark.parametrize(
    ("when", "issue"),
    [
        (
            {"param": "lvl", "op": ">", "value": 0},
            "commands.set_dimming.writes[0].when.param: 'lvl' names no parameter",
        ),
        (
            {"param": "level", "op": ">", "value": "0"},
            "commands.set_dimming.writes[0].when.value: '0' cannot be compared with 'level' (a int)",
        ),
        (
            {"param": "level", "op": "~", "value": 0},
            "commands.set_dimming.writes[0].when.op: Input should be",
        ),
    ],
)
def test_bad_write_conditions_are_refused_with_their_path(when: dict[str, Any], issue: str) -> None:
    data = _pole()
    data["commands"]["set_dimming"]["writes"][0]["when"] = when
    assert issue in _issues(data)


def test_a_command_that_writes_nothing_for_its_parameters_is_refused() -> None:
    data = _pole()
    data["commands"]["set_dimming"]["writes"] = [
        {"point": "dimming", "value": "{level}", "when": {"param": "level", "op": ">", "value": 0}}
    ]
    profile = parse_profile(data, "test.yaml")
    with pytest.raises(CommandRejected, match="command 'set_dimming' writes nothing when level=0"):
        profile.resolve_command("set_dimming", {"level": 0})
