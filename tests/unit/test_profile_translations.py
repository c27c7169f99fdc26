"""Profile translations: every built-in profile says everything people read in Chinese too, the
profile answers in the language asked for, and a translation of something the profile does not
declare is refused with its path."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from device_profiles import DeviceProfile, builtin_profile_names, load_builtin_profile
from device_profiles.schema import Translation

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROFILES = builtin_profile_names()
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")


def _zh(profile: DeviceProfile) -> Translation:
    words = profile.translations.get("zh")
    assert words is not None, f"{profile.name}: no 'translations: zh:' section"
    return words


def _missing(profile: DeviceProfile, language: str = "zh") -> list[str]:
    """Paths of what people read that has no words in ``language``."""
    words = profile.translations.get(language, Translation())
    missing: list[str] = []
    if not words.description:
        missing.append("description")
    for pname, point in profile.points.items():
        point_words = words.points.get(pname)
        if point_words is None or not point_words.description:
            missing.append(f"points.{pname}")
        missing.extend(
            f"points.{pname}.enum.{value}"
            for value in point.enum or {}
            if point_words is None or not point_words.enum.get(value)
        )
    for cname, command in profile.commands.items():
        command_words = words.commands.get(cname)
        if command_words is None or not command_words.description:
            missing.append(f"commands.{cname}")
        missing.extend(
            f"commands.{cname}.params.{param}"
            for param in command.params
            if command_words is None or not command_words.params.get(param)
        )
    missing.extend(f"alarms.{aname}" for aname in profile.alarms if not words.alarms.get(aname))
    return missing


def _texts(words: Translation) -> Iterator[tuple[str, str]]:
    """Every (path, text) of a translation."""
    yield "description", words.description
    for pname, point_words in words.points.items():
        yield f"points.{pname}", point_words.description
        for value, label in point_words.enum.items():
            yield f"points.{pname}.enum.{value}", label
    for cname, command_words in words.commands.items():
        yield f"commands.{cname}", command_words.description
        for param, text in command_words.params.items():
            yield f"commands.{cname}.params.{param}", text
    for aname, text in words.alarms.items():
        yield f"alarms.{aname}", text


def _pole() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        (ROOT / "device_profiles/profiles/smart_pole.yaml").read_text(encoding="utf-8")
    )
    return data


# -- every built-in profile is translated -------------------------------------------------------


def test_builtin_profiles_are_listed() -> None:
    assert "smart_pole" in PROFILES
    assert len(PROFILES) >= 8


@pytest.mark.parametrize("name", PROFILES)
def test_everything_people_read_has_chinese_words(name: str) -> None:
    profile = load_builtin_profile(name)
    _zh(profile)
    missing = _missing(profile)
    assert not missing, f"{name}: no Chinese words for {', '.join(missing)}"


@pytest.mark.parametrize("name", PROFILES)
def test_chinese_words_are_chinese(name: str) -> None:
    words = _zh(load_builtin_profile(name))
    not_chinese = [path for path, text in _texts(words) if not CJK.search(text)]
    assert not not_chinese, f"{name}: no Chinese characters in {', '.join(not_chinese)}"


def test_a_new_point_without_words_is_named() -> None:
    data = _pole()
    data["points"]["spare"] = {
        "description": "Spare input",
        "type": "bool",
        "modbus": {"table": "discrete_input", "address": 7},
    }
    data["points"]["dimming"]["enum"] = {0: "off", 100: "full"}
    data["commands"]["dim_to"] = {
        "description": "Set the dimming level",
        "params": {"level": {"type": "int", "min": 0, "max": 100, "description": "Level"}},
        "writes": [{"point": "dimming", "value": "{level}"}],
    }
    data["alarms"]["spare_on"] = {
        "description": "Spare input on",
        "point": "spare",
        "op": "==",
        "value": True,
        "severity": "info",
    }
    profile = DeviceProfile.model_validate(data)
    assert _missing(profile) == [
        "points.dimming.enum.0",
        "points.dimming.enum.100",
        "points.spare",
        "commands.dim_to",
        "commands.dim_to.params.level",
        "alarms.spare_on",
    ]
    untranslated = _missing(profile, "fr")
    assert untranslated[0] == "description"
    assert {f"points.{p}" for p in profile.points} <= set(untranslated)
    assert {f"commands.{c}" for c in profile.commands} <= set(untranslated)
    assert {f"alarms.{a}" for a in profile.alarms} <= set(untranslated)


# -- the profile answers in the language asked for ---------------------------------------------


@pytest.mark.parametrize("name", PROFILES)
def test_descriptions_in_chinese_and_english(name: str) -> None:
    profile = load_builtin_profile(name)
    words = _zh(profile)
    assert profile.describe("zh-CN") == words.description
    assert profile.describe("zh") == words.description
    assert profile.describe("en") == profile.describe() == profile.description
    for pname, point in profile.points.items():
        assert profile.describe_point(pname, "zh-CN") == words.points[pname].description
        assert profile.describe_point(pname, "en") == (point.description or pname)
        assert profile.describe_point(pname) == (point.description or pname)
    for cname, command in profile.commands.items():
        command_words = words.commands[cname]
        assert profile.describe_command(cname, "zh-CN") == command_words.description
        assert profile.describe_command(cname, "en") == (command.description or cname)
        for param, spec in command.params.items():
            assert profile.describe_command(cname, "zh-CN", param) == command_words.params[param]
            assert profile.describe_command(cname, "en", param) == (spec.description or param)
    for aname, rule in profile.alarms.items():
        assert profile.describe_alarm(aname, "zh-CN") == words.alarms[aname]
        assert profile.describe_alarm(aname, "en") == (rule.description or aname)


@pytest.mark.parametrize("name", PROFILES)
def test_enum_labels_in_chinese_and_english(name: str) -> None:
    profile = load_builtin_profile(name)
    words = _zh(profile)
    for pname, point in profile.points.items():
        if point.enum is None:
            assert profile.enum_label(pname, 0, "zh-CN") is None
            continue
        for value, english in point.enum.items():
            assert profile.enum_label(pname, value, "zh-CN") == words.points[pname].enum[value]
            assert profile.enum_label(pname, value, "en") == english
            assert profile.enum_label(pname, value) == english
        unknown = max(point.enum) + 1
        assert profile.enum_label(pname, unknown, "zh-CN") is None


def test_barrier_gate_state_reads_in_chinese() -> None:
    gate = load_builtin_profile("barrier_gate")
    assert gate.enum_label("state", 2, "zh-CN") == "已开闸"
    assert gate.enum_label("state", 2, "en") == "open"
    assert gate.enum_label("state", 4, "zh") == "故障"
    assert gate.describe_point("state", "zh-CN") == "道闸状态"
    assert gate.describe_point("state", "en") == "Gate state"


def test_unknown_point_falls_back_to_its_name() -> None:
    pole = load_builtin_profile("smart_pole")
    assert pole.describe_point("no_such_point", "zh-CN") == "no_such_point"
    assert pole.enum_label("no_such_point", 1, "zh-CN") is None


# -- a translation of something the profile does not declare is refused -----------------------


def _with_enum_point(data: dict[str, Any]) -> dict[str, Any]:
    data["points"]["dimming"]["enum"] = {0: "off", 100: "full"}
    return data


@pytest.mark.parametrize(
    ("path", "entry", "message"),
    [
        (
            ["points", "no_such_point"],
            {"description": "未知"},
            "translations.zh.points.no_such_point: unknown point",
        ),
        (
            ["points", "lamp_on", "enum"],
            {1: "开"},
            "translations.zh.points.lamp_on.enum: no such values [1]",
        ),
        (
            ["points", "dimming", "enum"],
            {0: "关", 50: "半亮"},
            "translations.zh.points.dimming.enum: no such values [50]",
        ),
        (
            ["commands", "no_such_command"],
            {"description": "未知"},
            "translations.zh.commands.no_such_command: unknown command",
        ),
        (
            ["commands", "set_dimming", "params", "no_such_param"],
            "未知",
            "translations.zh.commands.set_dimming.params: no such parameters ['no_such_param']",
        ),
        (
            ["commands", "lamp_on", "params"],
            {"level": "亮度"},
            "translations.zh.commands.lamp_on.params: no such parameters ['level']",
        ),
        (
            ["alarms", "no_such_alarm"],
            "未知",
            "translations.zh.alarms.no_such_alarm: unknown alarm",
        ),
    ],
)
def test_translation_of_an_unknown_name_is_refused(
    path: list[str], entry: object, message: str
) -> None:
    data = _with_enum_point(_pole())
    DeviceProfile.model_validate(copy.deepcopy(data))  # the profile itself is fine
    node: dict[Any, Any] = data["translations"]["zh"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = entry
    with pytest.raises(ValidationError, match=re.escape(message)):
        DeviceProfile.model_validate(data)


def test_translation_into_a_malformed_language_is_refused() -> None:
    data = _pole()
    data["translations"]["chinese"] = data["translations"]["zh"]
    with pytest.raises(ValidationError, match=r"translations\.chinese"):
        DeviceProfile.model_validate(data)
