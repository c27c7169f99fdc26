"""Typed HJ 212-2017 messages: what a frame's CN and CP mean.

:func:`parse_message` turns a :class:`~drivers.hj212.codec.Frame` into one of the classes
below, and every message has ``cn`` and :meth:`cp` to build a frame from it. A CN can be a
request or an upload: ``2051`` with ``BeginTime``/``EndTime`` asks for minute history, with a
``DataTime`` it carries minute data; ``1011`` without ``SystemTime`` asks for the time, with it
reports the time. Unknown CNs come back as :class:`OtherMessage`.

Answer codes (the standard's tables): QnRtn 1 ready to execute, 2 refused, 3 PW error,
4 MN error, 5 ST error, 6 Flag error, 7 QN error, 8 CN error, 9 CRC error, 100 unknown;
ExeRtn 1 success, 2 failed (unknown reason), 3 command condition error, 4 communication
timeout, 5 system busy, 6 system fault, 100 no data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from drivers.hj212.codec import (
    CpData,
    FieldError,
    Frame,
    format_time,
    parse_time,
)

__all__ = [
    "CN_DAY",
    "CN_GET_TIME",
    "CN_HOUR",
    "CN_MINUTE",
    "CN_REALTIME",
    "CN_SET_TIME",
    "DATA_CNS",
    "EXE_RTN",
    "QN_RTN",
    "DataAnswer",
    "DataUpload",
    "ExecutionResult",
    "GetRtdInterval",
    "GetTime",
    "HistoryRequest",
    "Message",
    "NotificationAnswer",
    "OtherMessage",
    "Pollutant",
    "RequestAnswer",
    "SetRtdInterval",
    "SetTime",
    "TimeReport",
    "format_number",
    "parse_message",
]

CN_REALTIME = "2011"
CN_MINUTE = "2051"
CN_HOUR = "2061"
CN_DAY = "2031"
CN_GET_TIME = "1011"
CN_SET_TIME = "1012"
#: CNs that carry monitoring data (uploads and history answers).
DATA_CNS = (CN_REALTIME, CN_MINUTE, CN_HOUR, CN_DAY)

QN_RTN: dict[int, str] = {
    1: "ready to execute",
    2: "request refused",
    3: "PW error",
    4: "MN error",
    5: "ST error",
    6: "Flag error",
    7: "QN error",
    8: "CN error",
    9: "CRC error",
    100: "unknown error",
}
EXE_RTN: dict[int, str] = {
    1: "success",
    2: "failed, reason unknown",
    3: "command request condition error",
    4: "communication timeout",
    5: "system busy",
    6: "system fault",
    100: "no data",
}


def format_number(value: float, decimals: int = 3) -> str:
    """A value as sent: fixed decimals, no exponent (``12.300`` -> ``12.3`` is not done)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} cannot be sent")
    return f"{value:.{decimals}f}"


@dataclass(frozen=True, slots=True)
class Pollutant:
    """The sub-values of one pollutant (factor) code: ``{"Rtd": "58", "Flag": "N"}``."""

    code: str
    fields: dict[str, str]

    def number(self, name: str) -> float | None:
        """Field ``name`` as a number, None if absent; FieldError if not a number."""
        text = self.fields.get(name)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            raise FieldError(f"{self.code}-{name}", f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise FieldError(f"{self.code}-{name}", f"{text!r} is not a finite number")
        return value

    @property
    def flag(self) -> str | None:
        """The data flag (N, F, M, S, D, C, T, B), if sent."""
        return self.fields.get("Flag")


@dataclass(frozen=True, slots=True)
class DataUpload:
    """Monitoring data: real-time (2011), minute (2051), hour (2061) or day (2031)."""

    cn: str
    data_time: datetime
    pollutants: dict[str, Pollutant] = field(default_factory=dict)

    def cp(self) -> CpData:
        items: list[dict[str, str]] = [{"DataTime": format_time(self.data_time)}]
        items += [
            {f"{code}-{name}": value for name, value in p.fields.items()}
            for code, p in self.pollutants.items()
        ]
        return CpData.of(*items)

    @classmethod
    def from_values(
        cls, cn: str, data_time: datetime, values: dict[str, dict[str, str]]
    ) -> DataUpload:
        return cls(cn, data_time, {c: Pollutant(c, dict(f)) for c, f in values.items()})


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """Ask for stored minute/hour/day data between two times (inclusive)."""

    cn: str
    begin: datetime
    end: datetime

    def cp(self) -> CpData:
        return CpData.of({"BeginTime": format_time(self.begin)}, {"EndTime": format_time(self.end)})


@dataclass(frozen=True, slots=True)
class _Answer:
    code: int
    key: ClassVar[str] = ""
    cn: ClassVar[str] = ""
    meanings: ClassVar[dict[int, str]] = {}

    @property
    def ok(self) -> bool:
        return self.code == 1

    @property
    def meaning(self) -> str:
        return self.meanings.get(self.code, "undefined code")

    def cp(self) -> CpData:
        return CpData.of({self.key: str(self.code)})


@dataclass(frozen=True, slots=True)
class RequestAnswer(_Answer):
    """9011: the request was accepted (QnRtn=1) or why not."""

    key: ClassVar[str] = "QnRtn"
    cn: ClassVar[str] = "9011"
    meanings: ClassVar[dict[int, str]] = QN_RTN


@dataclass(frozen=True, slots=True)
class ExecutionResult(_Answer):
    """9012: the result of executing a request (ExeRtn=1 success)."""

    key: ClassVar[str] = "ExeRtn"
    cn: ClassVar[str] = "9012"
    meanings: ClassVar[dict[int, str]] = EXE_RTN


@dataclass(frozen=True, slots=True)
class NotificationAnswer:
    """9013: answer to a notification command (empty CP)."""

    cn: ClassVar[str] = "9013"

    def cp(self) -> CpData:
        return CpData()


@dataclass(frozen=True, slots=True)
class DataAnswer:
    """9014: answer to a data upload that asked for one (empty CP)."""

    cn: ClassVar[str] = "9014"

    def cp(self) -> CpData:
        return CpData()


@dataclass(frozen=True, slots=True)
class GetTime:
    """1011 request: the on-site device's time (of pollutant ``pol_id``, if given)."""

    pol_id: str | None = None
    cn: ClassVar[str] = CN_GET_TIME

    def cp(self) -> CpData:
        return CpData.of({"PolId": self.pol_id}) if self.pol_id else CpData()


@dataclass(frozen=True, slots=True)
class TimeReport:
    """1011 upload: the device's current time."""

    system_time: datetime
    pol_id: str | None = None
    cn: ClassVar[str] = CN_GET_TIME

    def cp(self) -> CpData:
        items = [{"PolId": self.pol_id}] if self.pol_id else []
        return CpData.of(*items, {"SystemTime": format_time(self.system_time)})


@dataclass(frozen=True, slots=True)
class SetTime:
    """1012 request: set the device's time."""

    system_time: datetime
    pol_id: str | None = None
    cn: ClassVar[str] = CN_SET_TIME

    def cp(self) -> CpData:
        items = [{"PolId": self.pol_id}] if self.pol_id else []
        return CpData.of(*items, {"SystemTime": format_time(self.system_time)})


@dataclass(frozen=True, slots=True)
class GetRtdInterval:
    """1061 request (no CP) or answer (``RtdInterval``): the real-time upload interval."""

    interval_s: int | None = None
    cn: ClassVar[str] = "1061"

    def cp(self) -> CpData:
        return (
            CpData()
            if self.interval_s is None
            else CpData.of({"RtdInterval": str(self.interval_s)})
        )


@dataclass(frozen=True, slots=True)
class SetRtdInterval:
    """1062 request: set the real-time upload interval (30-3600 s in the standard)."""

    interval_s: int
    cn: ClassVar[str] = "1062"

    def cp(self) -> CpData:
        return CpData.of({"RtdInterval": str(self.interval_s)})


@dataclass(frozen=True, slots=True)
class OtherMessage:
    """A CN this module does not model; the CP as decoded."""

    cn: str
    data: CpData

    def cp(self) -> CpData:
        return self.data


Message = (
    DataUpload
    | HistoryRequest
    | RequestAnswer
    | ExecutionResult
    | NotificationAnswer
    | DataAnswer
    | GetTime
    | TimeReport
    | SetTime
    | GetRtdInterval
    | SetRtdInterval
    | OtherMessage
)


def _time(plain: dict[str, str], key: str) -> datetime:
    text = plain.get(key)
    if text is None:
        raise FieldError(key, "missing")
    try:
        return parse_time(text)
    except ValueError as exc:
        raise FieldError(key, str(exc)) from None


def _int(plain: dict[str, str], key: str) -> int:
    text = plain.get(key)
    if text is None:
        raise FieldError(key, "missing")
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise FieldError(key, f"{text!r} is not an integer")
    return int(text)


def parse_message(frame: Frame) -> Message:
    """The typed message a frame carries; FieldError naming the field if it does not fit."""
    cn, cp = frame.cn, frame.cp
    plain = cp.plain()
    if cn in DATA_CNS:
        if "BeginTime" in plain or "EndTime" in plain:
            return HistoryRequest(cn, _time(plain, "BeginTime"), _time(plain, "EndTime"))
        pollutants = {code: Pollutant(code, f) for code, f in cp.pollutants().items()}
        return DataUpload(cn, _time(plain, "DataTime"), pollutants)
    if cn == "9011":
        return RequestAnswer(_int(plain, "QnRtn"))
    if cn == "9012":
        return ExecutionResult(_int(plain, "ExeRtn"))
    if cn == "9013":
        return NotificationAnswer()
    if cn == "9014":
        return DataAnswer()
    if cn == CN_GET_TIME:
        pol_id = plain.get("PolId")
        if "SystemTime" in plain:
            return TimeReport(_time(plain, "SystemTime"), pol_id)
        return GetTime(pol_id)
    if cn == CN_SET_TIME:
        return SetTime(_time(plain, "SystemTime"), plain.get("PolId"))
    if cn == "1061":
        return GetRtdInterval(_int(plain, "RtdInterval") if "RtdInterval" in plain else None)
    if cn == "1062":
        return SetRtdInterval(_int(plain, "RtdInterval"))
    return OtherMessage(cn, cp)
