"""Commands of a profile: what an operator may send, and exactly which points each writes.

A command lists its parameters and its writes, in order; a write sets a point to a constant
or to a parameter (``"{level}"``), always or only ``when`` a parameter compares so (a lamp's
``set_dimming``: level 0 switches the relay off, any other level sets the dimming and switches
the relay on, as lighting controllers mean a level: uCIFI, TALQ). A write to a ``momentary`` point (a trigger the device
clears by itself, so it cannot be read back) may name the point that shows the device
accepted it (``confirm``: the gate's ``state`` after a write to its command register).

Everything is checked when the profile loads (:func:`check_command`, errors name the field,
``commands.open.writes[0].confirm.values[1]: ...``) and again for every command sent
(:func:`resolve_command`, by the hub and by the agent).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from device_profiles.errors import CommandRejected
from device_profiles.numbers import is_finite

if TYPE_CHECKING:
    from device_profiles.schema import Point

__all__ = [
    "COMPARE",
    "Command",
    "CommandParam",
    "CommandWrite",
    "Confirmation",
    "PointWrite",
    "Value",
    "WriteCondition",
    "check_command",
    "resolve_command",
]

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]

#: An engineering value as carried in telemetry and commands.
Value = bool | int | float | str
_PARAM_REF = re.compile(r"^\{([a-z][a-z0-9_]*)\}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def num(x: float) -> str:
    """A limit as people write it: ``100``, not ``100.0``."""
    return str(int(x)) if float(x).is_integer() else str(x)


class CommandParam(_Strict):
    """A parameter an operator supplies with a command."""

    type: Literal["int", "float", "bool", "string"]
    description: str = ""
    unit: str = ""
    min: float | None = None
    max: float | None = None
    choices: list[int | float | str] | None = None

    def check(self, name: str, value: object) -> Value:
        if self.type == "bool":
            ok = isinstance(value, bool)
        elif self.type == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            article = "an" if self.type == "int" else "a"
            raise CommandRejected(
                f"parameter '{name}' must be {article} {self.type}, got {value!r}"
            )
        assert isinstance(value, bool | int | float | str)  # narrowed by the checks above
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not is_finite(value):
                raise CommandRejected(f"parameter '{name}' must be finite, got {value!r}")
            if self.min is not None and value < self.min:
                raise CommandRejected(
                    f"parameter '{name}' = {value} is below the minimum {num(self.min)}{self.unit}"
                )
            if self.max is not None and value > self.max:
                raise CommandRejected(
                    f"parameter '{name}' = {value} is above the maximum {num(self.max)}{self.unit}"
                )
        if self.choices is not None and value not in self.choices:
            raise CommandRejected(f"parameter '{name}' = {value!r} is not one of {self.choices}")
        return value


CompareOp = Literal[">", ">=", "<", "<=", "==", "!="]
#: the comparison each operator of a profile (a condition, an alarm rule) names
COMPARE: dict[str, Callable[[Value, Value], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class WriteCondition(_Strict):
    """Make a write only when a parameter compares so: ``{param: level, op: ">", value: 0}``."""

    param: Name
    op: CompareOp
    value: bool | int | float | str

    def holds(self, params: Mapping[str, Value]) -> bool:
        return COMPARE[self.op](params[self.param], self.value)

    def check(self, where: str, params: Mapping[str, CommandParam]) -> None:
        """ValueError naming the field unless it compares a parameter with a value of its type."""
        param = params.get(self.param)
        if param is None:
            raise ValueError(f"{where}.param: '{self.param}' names no parameter")
        if param.type in ("bool", "string"):
            fits = isinstance(self.value, bool if param.type == "bool" else str)
            if fits and self.op not in ("==", "!="):
                raise ValueError(f"{where}.op: a {param.type} compares with == or != only")
        else:
            fits = isinstance(self.value, int | float) and not isinstance(self.value, bool)
        if not fits:
            raise ValueError(
                f"{where}.value: {self.value!r} cannot be compared with '{self.param}' "
                f"(a {param.type})"
            )


class Confirmation(_Strict):
    """The point that shows a device accepted a momentary write, and the values that do."""

    point: Name = Field(description="A point the device updates once it acted, e.g. state.")
    values: list[bool | int | float | str] = Field(
        min_length=1, description="Any of these shows the write was accepted."
    )
    within_s: float = Field(
        default=2.0, gt=0, le=60, description="How long the device may take to show it."
    )

    def shown_by(self, value: Value | None) -> bool:
        """True when ``value`` (of :attr:`point`) is one of :attr:`values`."""
        return any(_same(value, wanted) for wanted in self.values)


def _same(got: object, wanted: Value) -> bool:
    if isinstance(got, bool) or isinstance(wanted, bool):  # True is not 1 here
        return isinstance(got, bool) and isinstance(wanted, bool) and got == wanted
    return got == wanted


class CommandWrite(_Strict):
    """One point a command writes: a constant, or a parameter written as ``"{name}"``."""

    point: Name
    value: bool | int | float | str
    when: WriteCondition | None = Field(
        default=None, description="Write only when a parameter compares so (else skip it)."
    )
    confirm: Confirmation | None = Field(
        default=None,
        description="Momentary points only (they are not read back): the point and values "
        "that show the device accepted the write.",
    )

    @property
    def param(self) -> str | None:
        if isinstance(self.value, str):
            match = _PARAM_REF.match(self.value)
            if match:
                return match.group(1)
        return None


class Command(_Strict):
    """An operation an operator may request, mapped onto point writes made in order."""

    description: str = ""
    params: dict[Name, CommandParam] = Field(default_factory=dict)
    writes: list[CommandWrite] = Field(min_length=1)


class PointWrite(_Strict):
    """A validated write of an engineering value to a point (what a command resolves to)."""

    point: str
    value: Value
    #: for a momentary point: what shows the device accepted it (read instead of the point)
    confirm: Confirmation | None = None


def check_command(cname: str, command: Command, points: Mapping[str, Point]) -> None:
    """ValueError naming the field unless ``command`` fits the profile's ``points``."""
    referenced: set[str] = set()
    for index, write in enumerate(command.writes):
        point = points.get(write.point)
        where = f"commands.{cname}.writes[{index}]"
        if point is None:
            raise ValueError(f"{where}.point: unknown point '{write.point}'")
        if not point.writable:
            raise ValueError(f"{where}.point: point '{write.point}' is not writable")
        if write.confirm is not None:
            _check_confirmation(f"{where}.confirm", write, point, points)
        if write.when is not None:
            write.when.check(f"{where}.when", command.params)
            referenced.add(write.when.param)
        param_name = write.param
        if param_name is None:
            try:
                point.check_value(write.value)
            except CommandRejected as exc:
                raise ValueError(f"{where}.value: {exc.reason}") from exc
            continue
        param = command.params.get(param_name)
        if param is None:
            raise ValueError(f"{where}.value: '{write.value}' names no parameter")
        referenced.add(param_name)
        _check_param_fits(f"commands.{cname}.params.{param_name}", param, write.point, point)
    unused = set(command.params) - referenced
    if unused:
        raise ValueError(f"commands.{cname}.params: {sorted(unused)} are never used")


def _check_confirmation(
    where: str, write: CommandWrite, point: Point, points: Mapping[str, Point]
) -> None:
    confirm = write.confirm
    assert confirm is not None  # checked by the caller
    if not point.momentary:
        raise ValueError(
            f"{where}: only a write to a momentary point needs one "
            f"('{write.point}' is read back and compared)"
        )
    shown_by = points.get(confirm.point)
    if shown_by is None:
        raise ValueError(f"{where}.point: unknown point '{confirm.point}'")
    if shown_by.momentary:
        raise ValueError(f"{where}.point: '{confirm.point}' is momentary itself (never read)")
    for index, value in enumerate(confirm.values):
        try:
            shown_by.check_value(value)
        except CommandRejected as exc:
            raise ValueError(
                f"{where}.values[{index}]: point '{confirm.point}' {exc.reason}"
            ) from exc


def resolve_command(
    profile_name: str,
    commands: Mapping[str, Command],
    points: Mapping[str, Point],
    name: str,
    params: Mapping[str, object],
) -> list[PointWrite]:
    """The point writes command ``name`` makes, or :class:`CommandRejected` saying why not."""
    command = commands.get(name)
    if command is None:
        known = ", ".join(sorted(commands)) or "none"
        raise CommandRejected(
            f"unknown command '{name}' for profile '{profile_name}' (known: {known})"
        )
    unknown = sorted(set(params) - set(command.params))
    if unknown:
        raise CommandRejected(
            f"command '{name}' takes no parameter {', '.join(map(repr, unknown))}"
        )
    checked: dict[str, Value] = {}
    for pname, param in command.params.items():
        if pname not in params:
            raise CommandRejected(f"command '{name}' needs parameter '{pname}'")
        checked[pname] = param.check(pname, params[pname])
    writes = []
    for write in command.writes:
        if write.when is not None and not write.when.holds(checked):
            continue
        point = points[write.point]
        ref = write.param
        value = checked[ref] if ref is not None else write.value
        try:
            value = point.check_value(value)
        except CommandRejected as exc:
            raise CommandRejected(f"command '{name}': point '{write.point}' {exc.reason}") from exc
        writes.append(PointWrite(point=write.point, value=value, confirm=write.confirm))
    if not writes:
        shown = ", ".join(f"{k}={v!r}" for k, v in checked.items())
        raise CommandRejected(f"command '{name}' writes nothing when {shown}")
    return writes


def _check_param_fits(where: str, param: CommandParam, point_name: str, point: Point) -> None:
    kinds = {"bool": ("bool",), "string": ("string",)}
    expected = kinds.get(point.type, ("int", "float"))
    if param.type not in expected:
        raise ValueError(
            f"{where}: a {param.type} cannot be written to '{point_name}' ({point.type})"
        )
    if point.is_numeric:
        if point.min is not None and (param.min is None or param.min < point.min):
            raise ValueError(
                f"{where}: must declare min >= {num(point.min)} (the minimum of point '{point_name}')"
            )
        if point.max is not None and (param.max is None or param.max > point.max):
            raise ValueError(
                f"{where}: must declare max <= {num(point.max)} (the maximum of point '{point_name}')"
            )
