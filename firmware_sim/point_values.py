"""A point's value as a person types it (``door_open=true``, ``pm25=180``, ``state=open``),
parsed by the point's type from the device's profile, and checked against its range and enum.

Used by ``firmware-sim set``: the simulators then serve that value until it is released.
"""

from __future__ import annotations

from device_profiles import CommandRejected, DeviceProfile, Value

__all__ = ["PointValueError", "parse_assignment", "parse_point_value"]

_TRUE = {"true", "1", "on", "yes", "open", "opened"}
_FALSE = {"false", "0", "off", "no", "closed", "close", "shut"}


class PointValueError(ValueError):
    """A ``POINT=VALUE`` that the device's profile does not allow, and why."""


def parse_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise PointValueError(f"{text!r}: write POINT=VALUE, e.g. door_open=true")
    return name.strip(), value.strip()


def parse_point_value(profile: DeviceProfile, name: str, text: str) -> Value:
    """The engineering value ``text`` means for point ``name`` of ``profile``, or raise."""
    point = profile.points.get(name)
    if point is None:
        have = ", ".join(sorted(profile.points))
        raise PointValueError(f"{profile.name} has no point {name!r} (have: {have})")
    value: Value
    lowered = text.lower()
    if point.type == "bool":
        if lowered in _TRUE:
            value = True
        elif lowered in _FALSE:
            value = False
        else:
            raise PointValueError(f"{name}: expects true or false, got {text!r}")
    elif point.type == "string":
        value = text
    else:
        labels = {label.lower(): key for key, label in (point.enum or {}).items()}
        if lowered in labels:
            value = labels[lowered]
        else:
            try:
                number = float(text)
            except ValueError:
                hint = f" or one of {', '.join(point.enum.values())}" if point.enum else ""
                raise PointValueError(f"{name}: expects a number{hint}, got {text!r}") from None
            value = int(number) if point.is_integral and number.is_integer() else number
    try:
        return point.check_value(value)
    except CommandRejected as exc:
        raise PointValueError(f"{name}: {exc}") from None
