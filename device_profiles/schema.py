"""Device profile schema v1: what a device type exposes and how to reach it.

A profile describes a device *type* (EdgeX's "device profile"): its points (where each value
lives on the wire, its data type, scaling, unit, limits), the commands an operator may send and
exactly which points each command writes, and the alarm rules the hub evaluates. Device
*instances* (address, unit id, site) live in the agent's configuration, not here.

Raw and engineering values: a point's wire value (``raw``) becomes the engineering value as
``raw * scale + offset``; writes go the other way. This conversion lives here, once, and is used
by the edge agent and the simulators alike (drivers only move raw values).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device_profiles.commands import (
    NAME_PATTERN,
    Command,
    CommandParam,
    CommandWrite,
    Confirmation,
    PointWrite,
    Value,
    WriteCondition,
    check_command,
    num,
    resolve_command,
)
from device_profiles.errors import CommandRejected
from device_profiles.numbers import is_finite

__all__ = [
    "REGISTER_COUNT",
    "AlarmRule",
    "CoapLocation",
    "Command",
    "CommandParam",
    "CommandWrite",
    "Confirmation",
    "DataType",
    "DeviceProfile",
    "Hj212Location",
    "ModbusLocation",
    "ModbusTable",
    "Point",
    "PointWrite",
    "Value",
    "WriteCondition",
]

Name = Annotated[str, Field(pattern=NAME_PATTERN)]

DataType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ModbusTable = Literal["coil", "discrete_input", "input_register", "holding_register"]
ByteOrder = Literal["big", "little"]

#: Registers each fixed-size data type occupies. ``string`` takes ``length`` registers and a
#: ``bool`` takes one bit of a register (``bit``) or one coil/discrete input.
REGISTER_COUNT: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_BIT_TABLES = ("coil", "discrete_input")
_WRITABLE_TABLES = ("coil", "holding_register")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusLocation(_Strict):
    """Where a point lives on a Modbus device."""

    table: ModbusTable
    address: int = Field(ge=0, le=65535, description="Zero-based address (PDU address).")
    length: int | None = Field(
        default=None, ge=1, le=123, description="Registers a string occupies (strings only)."
    )
    bit: int | None = Field(
        default=None, ge=0, le=15, description="Bit of a register holding a bool (0 = LSB)."
    )
    byte_order: ByteOrder = Field(default="big", description="Byte order inside each register.")
    word_order: ByteOrder = Field(default="big", description="Register order of 32/64-bit values.")

    def register_count(self, data_type: DataType) -> int:
        if data_type == "string":
            return self.length or 0
        return 1 if self.table in _BIT_TABLES else REGISTER_COUNT[data_type]

    @property
    def is_bit_table(self) -> bool:
        return self.table in _BIT_TABLES


Hj212Field = Literal["Rtd", "Avg", "Min", "Max", "Cou", "ZsRtd", "ZsAvg", "ZsMin", "ZsMax"]


class Hj212Location(_Strict):
    """Where a point lives in HJ 212-2017 data: a pollutant (factor) code and one sub-value."""

    code: str = Field(
        pattern=r"^[a-zA-Z][a-zA-Z0-9]{1,9}$",
        description="Pollutant code, e.g. a34004 (PM2.5), a21026 (SO2), LA (noise).",
    )
    field: Hj212Field = Field(
        default="Rtd", description="Rtd real-time, Avg/Min/Max/Cou aggregates, Zs* converted."
    )


class CoapLocation(_Strict):
    """Where a point lives on a CoAP device: a resource, and a key inside a JSON/CBOR body."""

    path: str = Field(pattern=r"^(/[A-Za-z0-9._~-]+)+$", description="Resource path, e.g. /tilt")
    key: str | None = Field(
        default=None, description="Key inside a JSON or CBOR resource; none for a plain value."
    )
    observe: bool = Field(default=False, description="Subscribe (RFC 7641) instead of polling.")


#: Which location each transport's points carry.
_LOCATION_OF_TRANSPORT = {"modbus": "modbus", "hj212": "hj212", "coap": "coap"}


class Point(_Strict):
    """One value of a device: a measurement, a status or a setting.

    A point carries the location of its profile's transport: ``modbus``, ``hj212`` or ``coap``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    description: str = ""
    type: DataType
    unit: str = ""
    modbus_location: ModbusLocation | None = Field(default=None, alias="modbus")
    hj212_location: Hj212Location | None = Field(default=None, alias="hj212")
    coap_location: CoapLocation | None = Field(default=None, alias="coap")
    scale: float = Field(default=1.0, description="engineering = raw * scale + offset")
    offset: float = 0.0
    writable: bool = False
    momentary: bool = Field(
        default=False,
        description="A trigger the device clears by itself once accepted (e.g. a command "
        "register): written, never verified by reading back.",
    )
    min: float | None = Field(default=None, description="Lowest valid engineering value.")
    max: float | None = Field(default=None, description="Highest valid engineering value.")
    enum: dict[int, str] | None = Field(default=None, description="Labels of integer values.")
    precision: int | None = Field(
        default=None,
        ge=0,
        le=9,
        description="Decimal places a number is shown with (CLI, console; telemetry and the "
        "API keep the value as read). Default: 0 for integers, the scale's decimals for "
        "scaled integers, 2 for floats.",
    )
    poll_interval_s: float | None = Field(default=None, gt=0, le=86400)
    deadband: float | None = Field(
        default=None, ge=0, description="Report only changes larger than this (engineering)."
    )

    @property
    def location_kind(self) -> str | None:
        """``modbus``, ``hj212`` or ``coap``: which location the point has."""
        kinds = [
            kind
            for kind, loc in (
                ("modbus", self.modbus_location),
                ("hj212", self.hj212_location),
                ("coap", self.coap_location),
            )
            if loc is not None
        ]
        return kinds[0] if len(kinds) == 1 else None

    @property
    def modbus(self) -> ModbusLocation:
        """The Modbus location (points of Modbus profiles always have one)."""
        if self.modbus_location is None:
            raise AttributeError("this point has no Modbus location")
        return self.modbus_location

    @property
    def hj212(self) -> Hj212Location:
        if self.hj212_location is None:
            raise AttributeError("this point has no HJ 212 location")
        return self.hj212_location

    @property
    def coap(self) -> CoapLocation:
        if self.coap_location is None:
            raise AttributeError("this point has no CoAP location")
        return self.coap_location

    @model_validator(mode="after")
    def _check(self) -> Self:
        present = [
            k
            for k, v in (
                ("modbus", self.modbus_location),
                ("hj212", self.hj212_location),
                ("coap", self.coap_location),
            )
            if v is not None
        ]
        if len(present) != 1:
            raise ValueError(
                "needs exactly one location: 'modbus', 'hj212' or 'coap'"
                + (f" (has {', '.join(present)})" if present else "")
            )
        if self.modbus_location is not None:
            self._check_modbus(self.modbus_location)
        t = self.type
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if t in ("bool", "string") and (self.scale != 1 or self.offset != 0):
            raise ValueError(f"scale and offset do not apply to {t} points")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        if self.momentary and not self.writable:
            raise ValueError("only a writable point can be momentary")
        if self.precision is not None and (t in ("bool", "string") or self.enum is not None):
            kind = "enum" if self.enum is not None else t
            raise ValueError(f"precision applies to numbers, not to {kind} points")
        return self

    def _check_modbus(self, loc: ModbusLocation) -> None:
        t = self.type
        if loc.is_bit_table and t != "bool":
            raise ValueError(f"a {loc.table} holds one bit: type must be bool, not {t}")
        if t == "bool" and not loc.is_bit_table and loc.bit is None:
            raise ValueError(f"a bool in a {loc.table} needs 'bit' (0-15)")
        if loc.bit is not None and (t != "bool" or loc.is_bit_table):
            raise ValueError("'bit' is only for bool points in register tables")
        if t == "string" and loc.length is None:
            raise ValueError("a string point needs 'length' (registers)")
        if t != "string" and loc.length is not None:
            raise ValueError(
                f"'length' is only for strings; a {t} always occupies "
                f"{REGISTER_COUNT[t]} register(s)"
            )
        if self.writable and loc.table not in _WRITABLE_TABLES:
            raise ValueError(
                f"{loc.table} points are read-only; only coils and holding registers can be writable"
            )

    @property
    def is_numeric(self) -> bool:
        return self.type not in ("bool", "string")

    @property
    def is_integral(self) -> bool:
        """True when the engineering value is an int (integer type, no scaling)."""
        return self.type in _INT_RANGES and self.scale == 1 and float(self.offset).is_integer()

    def from_raw(self, raw: Value) -> Value:
        """Engineering value of a raw wire value."""
        if not self.is_numeric:
            return raw
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise TypeError(f"raw value of a {self.type} must be a number, got {raw!r}")
        if self.is_integral and isinstance(raw, int):
            return raw + int(self.offset)
        value = raw * self.scale + self.offset
        return round(value, 10) if math.isfinite(value) else value

    def check_value(self, value: Value) -> Value:
        """Validate an engineering value to be written; return it normalised, or raise."""
        if self.type == "bool":
            if not isinstance(value, bool):
                raise CommandRejected(f"expects true or false, got {value!r}")
            return value
        if self.type == "string":
            if not isinstance(value, str):
                raise CommandRejected(f"expects a string, got {value!r}")
            limit = 2 * (self.modbus_location.length or 0) if self.modbus_location else 1024
            if len(value.encode()) > limit:
                raise CommandRejected(f"string longer than {limit} bytes")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandRejected(f"expects a number, got {value!r}")
        if not is_finite(value):
            raise CommandRejected(f"expects a finite number, got {value!r}")
        if self.min is not None and value < self.min:
            raise CommandRejected(f"{value} is below the minimum {num(self.min)}{self.unit}")
        if self.max is not None and value > self.max:
            raise CommandRejected(f"{value} is above the maximum {num(self.max)}{self.unit}")
        if self.enum is not None and value not in self.enum:
            allowed = ", ".join(f"{k} ({v})" for k, v in sorted(self.enum.items()))
            raise CommandRejected(f"{value} is not one of {allowed}")
        raw = self.to_raw(value)
        lo, hi = _INT_RANGES.get(self.type, (-math.inf, math.inf))
        if isinstance(raw, int) and not lo <= raw <= hi:
            raise CommandRejected(f"{value} does not fit a {self.type} register")
        return value

    def to_raw(self, value: Value) -> Value:
        """Raw wire value of an engineering value (rounded to the nearest integer for ints)."""
        if not self.is_numeric:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandRejected(f"expects a number, got {value!r}")
        raw = (value - self.offset) / self.scale
        if self.type in _INT_RANGES:
            return round(raw)
        return raw


class AlarmRule(_Strict):
    """An alarm raised when ``point op value`` holds for ``for_s`` seconds."""

    description: str = ""
    point: Name
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: bool | float
    for_s: float = Field(default=0, ge=0)
    severity: Literal["critical", "major", "minor", "warning", "info"]


class PointWords(_Strict):
    """A point's words in another language."""

    description: str = ""
    enum: dict[int, str] = Field(default_factory=dict, description="Labels of integer values.")


class CommandWords(_Strict):
    """A command's words in another language."""

    description: str = ""
    params: dict[Name, str] = Field(default_factory=dict, description="Parameters' descriptions.")


class Translation(_Strict):
    """A profile's words in another language (the profile itself is in English): only what
    people read; every name must be one the profile declares."""

    description: str = ""
    points: dict[Name, PointWords] = Field(default_factory=dict)
    commands: dict[Name, CommandWords] = Field(default_factory=dict)
    alarms: dict[Name, str] = Field(default_factory=dict, description="Alarm descriptions.")


#: a language a profile may be translated into: ``zh`` (Simplified Chinese), ``en-GB``, ...
Language = Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")]


class DeviceProfile(_Strict):
    """A device type. Load one with :func:`device_profiles.load_profile`."""

    schema_version: Literal[1] = Field(description="Version of this schema; currently 1.")
    name: Name
    description: str = ""
    manufacturer: str = ""
    model: str = ""
    transport: Literal["modbus", "hj212", "coap"] = Field(
        description="How the device is reached; every point carries this transport's location."
    )
    default_poll_interval_s: float = Field(default=5.0, gt=0, le=86400)
    points: dict[Name, Point] = Field(min_length=1)
    commands: dict[Name, Command] = Field(default_factory=dict)
    alarms: dict[Name, AlarmRule] = Field(default_factory=dict)
    translations: dict[Language, Translation] = Field(
        default_factory=dict,
        description="The profile's descriptions and enum labels in other languages, e.g. zh.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        wanted = _LOCATION_OF_TRANSPORT[self.transport]
        for pname, pt in self.points.items():
            if pt.location_kind != wanted:
                raise ValueError(
                    f"points.{pname}: a {self.transport} profile's points need '{wanted}', "
                    f"not '{pt.location_kind}'"
                )
        if self.transport == "modbus":
            self._check_overlaps()
        for cname, command in self.commands.items():
            check_command(cname, command, self.points)
        for aname, rule in self.alarms.items():
            point = self.points.get(rule.point)
            if point is None:
                raise ValueError(f"alarms.{aname}.point: unknown point '{rule.point}'")
            if isinstance(rule.value, bool) != (point.type == "bool"):
                raise ValueError(
                    f"alarms.{aname}.value: {rule.value!r} does not fit point '{rule.point}' ({point.type})"
                )
        for language, words in self.translations.items():
            self._check_words(f"translations.{language}", words)
        return self

    def _check_words(self, where: str, words: Translation) -> None:
        for pname, point_words in words.points.items():
            point = self.points.get(pname)
            if point is None:
                raise ValueError(f"{where}.points.{pname}: unknown point")
            stray = set(point_words.enum) - set(point.enum or {})
            if stray:
                raise ValueError(f"{where}.points.{pname}.enum: no such values {sorted(stray)}")
        for cname, command_words in words.commands.items():
            command = self.commands.get(cname)
            if command is None:
                raise ValueError(f"{where}.commands.{cname}: unknown command")
            stray_params = set(command_words.params) - set(command.params)
            if stray_params:
                raise ValueError(
                    f"{where}.commands.{cname}.params: no such parameters {sorted(stray_params)}"
                )
        for aname in words.alarms:
            if aname not in self.alarms:
                raise ValueError(f"{where}.alarms.{aname}: unknown alarm")

    def _check_overlaps(self) -> None:
        # (table, register) -> (point, bit or None); bits of one register may be shared
        used: dict[tuple[str, int], list[tuple[str, int | None]]] = {}
        for pname, point in self.points.items():
            loc = point.modbus
            for reg in range(loc.address, loc.address + loc.register_count(point.type)):
                if reg > 65535:
                    raise ValueError(f"points.{pname}.modbus.address: the point runs past 65535")
                for other, other_bit in used.get((loc.table, reg), []):
                    if loc.bit is None or other_bit is None or loc.bit == other_bit:
                        raise ValueError(
                            f"points.{pname}.modbus: overlaps point '{other}' at {loc.table} {reg}"
                        )
                used.setdefault((loc.table, reg), []).append((pname, loc.bit))

    # -- use --------------------------------------------------------------------------------

    def resolve_command(self, name: str, params: dict[str, object]) -> list[PointWrite]:
        """The point writes a command makes, or :class:`CommandRejected` saying why not.

        Used by the hub (to refuse with 422) and by the agent (the last line of defence, as
        Modbus has no authentication): unknown commands, missing, unknown or mistyped
        parameters and out-of-range values are all refused.
        """
        return resolve_command(self.name, self.commands, self.points, name, params)

    # -- words for people -------------------------------------------------------------------

    def words(self, language: str | None) -> Translation | None:
        """The translation for ``language`` (``zh-CN`` finds ``zh``), None for English."""
        if not language or language.startswith("en"):
            return None
        return self.translations.get(language) or self.translations.get(language[:2])

    def describe(self, language: str | None = None) -> str:
        """The profile's description in ``language``, else in English."""
        words = self.words(language)
        return (words.description if words else "") or self.description

    def describe_point(self, name: str, language: str | None = None) -> str:
        """A point's description in ``language`` (else English, else its name)."""
        words = self.words(language)
        found = words.points.get(name) if words else None
        point = self.points.get(name)
        return (found.description if found else "") or (point.description if point else "") or name

    def enum_label(self, name: str, value: int, language: str | None = None) -> str | None:
        """The label of an enum point's value in ``language`` (else English); None if none."""
        words = self.words(language)
        found = words.points.get(name) if words else None
        if found is not None and value in found.enum:
            return found.enum[value]
        point = self.points.get(name)
        return point.enum.get(value) if point is not None and point.enum else None

    def describe_command(
        self, name: str, language: str | None = None, param: str | None = None
    ) -> str:
        """A command's description (or one of its parameters') in ``language``, else
        English, else the name."""
        words = self.words(language)
        found = words.commands.get(name) if words else None
        command = self.commands.get(name)
        if param is None:
            english = command.description if command else ""
            return (found.description if found else "") or english or name
        spec = command.params.get(param) if command else None
        return (
            (found.params.get(param, "") if found else "")
            or (spec.description if spec else "")
            or param
        )

    def describe_alarm(self, name: str, language: str | None = None) -> str:
        words = self.words(language)
        rule = self.alarms.get(name)
        return (
            (words.alarms.get(name, "") if words else "")
            or (rule.description if rule else "")
            or name
        )

    def poll_interval(self, point_name: str) -> float:
        interval = self.points[point_name].poll_interval_s
        return interval if interval is not None else self.default_poll_interval_s
