"""How a value is shown to people: rounded to its point's precision, with its unit or the
label of its enum value (``2050.7 W``, ``open (2)``).

One formatter for every human-facing view (``iotctl``, ``edge-agent check``, a web console):
telemetry, the API and ``--json`` outputs keep the value as read. A point missing from the
profile (or a profile unknown to the viewer) is shown as it came, with the unit given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from device_profiles.schema import DeviceProfile, Point, Value

__all__ = ["ShownValue", "display_precision", "format_value", "show_values"]

#: decimals of an unscaled float point without a declared precision
FLOAT_PRECISION = 2
#: units written against the number (40%, 55.2%RH, 12.5°); others after a space (21.3 °C)
_TIGHT_UNITS = ("%", "°")


@dataclass(frozen=True, slots=True)
class ShownValue:
    """One point's value for people (``text``) beside the value as read (``value``)."""

    name: str
    value: Value
    text: str
    unit: str
    label: str | None = None

    def as_json(self) -> dict[str, Value | None]:
        return {"value": self.value, "text": self.text, "unit": self.unit, "label": self.label}


def display_precision(point: Point) -> int:
    """Decimal places of ``point``: declared, else 0 for integers, the scale's (and
    offset's) decimals for scaled integers, and 2 for floats."""
    if point.precision is not None:
        return point.precision
    if point.is_integral or not point.is_numeric:
        return 0
    places = max(_decimals(point.scale), _decimals(point.offset))
    if point.type in ("float32", "float64"):
        return max(places, FLOAT_PRECISION)
    return places


def _decimals(number: float) -> int:
    exponent = Decimal(repr(number)).normalize().as_tuple().exponent
    return min(-exponent, 9) if isinstance(exponent, int) and exponent < 0 else 0


def format_value(point: Point | None, value: Value, unit: str | None = None) -> str:
    """``value`` as people read it: ``2050.7 W``, ``open (2)``, ``true``."""
    return _show("", point, value, unit).text


def show_values(
    profile: DeviceProfile | None,
    values: Mapping[str, Value],
    units: Mapping[str, str] | None = None,
    language: str | None = None,
) -> list[ShownValue]:
    """Every value of ``values``, in the profile's point order (points it does not declare
    last, by name); ``units`` is used where the profile does not say; enum labels in
    ``language`` where the profile has them (its ``translations``), else in English."""
    points = profile.points if profile is not None else {}
    units = units or {}
    order = [n for n in points if n in values] + sorted(n for n in values if n not in points)
    shown = [_show(n, points.get(n), values[n], units.get(n)) for n in order]
    if profile is None or profile.words(language) is None:
        return shown
    return [_relabelled(profile, v, language) for v in shown]


def _relabelled(profile: DeviceProfile, shown: ShownValue, language: str | None) -> ShownValue:
    if shown.label is None or not isinstance(shown.value, int | float):
        return shown
    label = profile.enum_label(shown.name, int(shown.value), language) or shown.label
    return ShownValue(shown.name, shown.value, f"{label} ({int(shown.value)})", shown.unit, label)


def _show(name: str, point: Point | None, value: Value, unit: str | None) -> ShownValue:
    unit = point.unit if point is not None else (unit or "")
    if isinstance(value, bool):
        return ShownValue(name, value, "true" if value else "false", unit)
    if isinstance(value, str) or point is None:
        return ShownValue(name, value, _with_unit(str(value), unit), unit)
    if point.enum is not None and isinstance(value, int | float) and float(value).is_integer():
        label = point.enum.get(int(value))
        text = f"{label} ({int(value)})" if label is not None else f"{int(value)} (unknown)"
        return ShownValue(name, value, text, unit, label)
    return ShownValue(name, value, _with_unit(_number(value, display_precision(point)), unit), unit)


def _number(value: int | float, places: int) -> str:
    if isinstance(value, int):
        return str(value) if places == 0 else f"{value:.{places}f}"
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.0"


def _with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return f"{text}{unit}" if unit.startswith(_TIGHT_UNITS) and unit != "°C" else f"{text} {unit}"
