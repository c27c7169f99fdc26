"""What an NB-IoT modem's answers mean: signal, registration, attach, PSM timers and verdicts.

Pure decoding, no I/O: :mod:`drivers.nbiot.modem_probe` asks the modem and fills a
:class:`ModemReport`; ``iotctl modem check`` prints it with :func:`verdicts`, and the NB-IoT
agent sends it in its health (:func:`to_health`, the wire contract's
:class:`~device_profiles.wire.ModemHealth`). Every word a person reads comes as a pair
``(English, Chinese)`` (:data:`Words`); the caller picks one (``iotctl.language.say``).

Decoders (3GPP TS 27.007 and TS 24.008):

* ``+CSQ`` ``<rssi>`` 0-31 -> -113 ... -51 dBm (2 dB a step), 99 -> not known
  (:func:`csq_dbm`), and its quality word (:func:`signal_quality`):

  ======================  ===========  ==========
  dBm                     CSQ          quality
  ======================  ===========  ==========
  -65 and above           24-31        excellent
  -83 to -67              15-23        good
  -99 to -85              7-14         fair
  -111 to -101            1-6          poor
  -113 or less, unknown   0, 99        no_signal
  ======================  ===========  ==========

* ``+CEREG`` ``<stat>`` (:data:`REGISTRATION`): 0 not searching, 1 home, 2 searching,
  3 denied, 4 unknown, 5 roaming.
* PSM timers, 8-bit strings ``"uuuvvvvv"`` (unit bits 8-6, value bits 5-1):
  T3412 periodic TAU (GPRS Timer 3, :func:`decode_t3412`) and T3324 active time
  (GPRS Timer 2, :func:`decode_t3324`); unit ``111`` is "deactivated" (None).

Errors: :class:`~drivers.errors.ProtocolError` for an answer that cannot be decoded.
"""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from device_profiles.wire import ModemHealth, ModemPsm, ModemQuality, ModemRegistration
from drivers.errors import ProtocolError
from drivers.nbiot.at_parsing import split_fields, strip_prefix
from drivers.nbiot.modem import rssi_dbm

__all__ = [
    "QUALITY_WORDS",
    "REGISTRATION",
    "SIM_ERRORS",
    "Level",
    "ModemReport",
    "RadioStats",
    "RoundTrip",
    "SimState",
    "Verdict",
    "Words",
    "csq_dbm",
    "decode_t3324",
    "decode_t3412",
    "duration_words",
    "overall_level",
    "parse_cereg_timers",
    "parse_cpsms",
    "parse_firmware",
    "parse_nband",
    "parse_nuestats",
    "psm_words",
    "registration_code",
    "registration_words",
    "signal_quality",
    "to_health",
    "unreachable_verdict",
    "verdict_words",
    "verdicts",
]

#: Words for a person: (English, 简体中文).
Words = tuple[str, str]
Level = Literal["ok", "warning", "fail"]
#: ready: the ICCID was read; missing: no SIM (+CME ERROR 10); error: another SIM error
#: (PIN, failure, wrong SIM); unknown: the modem could not tell.
SimState = Literal["ready", "missing", "error", "unknown"]

# -- signal -------------------------------------------------------------------------------


def csq_dbm(csq: int) -> int | None:
    """dBm of a ``+CSQ`` ``<rssi>``: 0 -> -113 (or less), 31 -> -51 (or more), 99 -> None."""
    return rssi_dbm(csq)


def signal_quality(rssi: int | None) -> ModemQuality:
    """The quality word of a CSQ signal in dBm (None: not known -> ``no_signal``)."""
    if rssi is None or rssi <= -113:
        return "no_signal"
    if rssi >= -65:
        return "excellent"
    if rssi >= -83:
        return "good"
    if rssi >= -99:
        return "fair"
    return "poor"


QUALITY_WORDS: dict[ModemQuality, Words] = {
    "excellent": ("excellent", "极好"),
    "good": ("good", "良好"),
    "fair": ("fair", "一般"),
    "poor": ("poor", "差"),
    "no_signal": ("no signal", "无信号"),
}
_QUALITY_BY_NAME: dict[str, Words] = {str(k): v for k, v in QUALITY_WORDS.items()}

# -- registration -------------------------------------------------------------------------

#: ``+CEREG`` ``<stat>`` -> (code, words).
REGISTRATION: dict[int, tuple[ModemRegistration, Words]] = {
    0: ("not_searching", ("not registered, not searching", "未注册，未在搜索网络")),
    1: ("registered_home", ("registered, home network", "已注册，本地网络")),
    2: ("searching", ("not registered, searching", "未注册，正在搜索网络")),
    3: ("denied", ("registration denied", "注册被拒绝")),
    4: ("unknown", ("registration unknown (out of coverage?)", "注册状态未知（可能无覆盖）")),
    5: ("registered_roaming", ("registered, roaming", "已注册，漫游")),
}
_OTHER: tuple[ModemRegistration, Words] = (
    "other",
    ("registered for SMS or emergency only", "仅注册短信或紧急业务"),
)


def registration_code(stat: int) -> ModemRegistration:
    return REGISTRATION.get(stat, _OTHER)[0]


def registration_words(stat: int) -> Words:
    return REGISTRATION.get(stat, _OTHER)[1]


# -- PSM timers ---------------------------------------------------------------------------

#: GPRS Timer 3 (T3412 extended) unit bits -> seconds per value step; 0b111 deactivated.
_T3412_UNITS = {
    0b000: 600,
    0b001: 3600,
    0b010: 36000,
    0b011: 2,
    0b100: 30,
    0b101: 60,
    0b110: 1_152_000,
}
#: GPRS Timer 2 (T3324) unit bits -> seconds per step; 0b111 deactivated; other values: 1 min.
_T3324_UNITS = {0b000: 2, 0b001: 60, 0b010: 360}


def _timer_bits(bits: str, what: str) -> tuple[int, int]:
    text = bits.strip().strip('"')
    if len(text) != 8 or set(text) - {"0", "1"}:
        raise ProtocolError(f"{what}: {bits!r} is not an 8-bit string")
    number = int(text, 2)
    return number >> 5, number & 0b11111


def decode_t3412(bits: str) -> int | None:
    """T3412 periodic TAU (``"00100110"`` -> 6 h = 21600 s); None when deactivated (``111``)."""
    unit, value = _timer_bits(bits, "T3412")
    if unit == 0b111:
        return None
    return _T3412_UNITS[unit] * value


def decode_t3324(bits: str) -> int | None:
    """T3324 active time (``"00100001"`` -> 60 s); None when deactivated (``111``)."""
    unit, value = _timer_bits(bits, "T3324")
    if unit == 0b111:
        return None
    return _T3324_UNITS.get(unit, 60) * value


def duration_words(seconds: int | None) -> Words:
    """``54 min``, ``6 h``, ``1 h 30 min``, ``10 s``; None: deactivated."""
    if seconds is None:
        return ("deactivated", "已停用")
    if seconds < 60:
        return (f"{seconds} s", f"{seconds} 秒")
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return (
            (f"{minutes} min", f"{minutes} 分钟")
            if not rest
            else (f"{minutes} min {rest} s", f"{minutes} 分 {rest} 秒")
        )
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if not minutes:
        return (f"{hours} h", f"{hours} 小时")
    return (f"{hours} h {minutes} min", f"{hours} 小时 {minutes} 分钟")


def psm_words(psm: ModemPsm | None) -> Words:
    """``on: periodic TAU 6 h, active time 1 min (granted by the network)``."""
    if psm is None:
        return ("not known", "未知")
    if not psm.enabled:
        return ("off", "关闭")
    tau, active = duration_words(psm.periodic_tau_s), duration_words(psm.active_time_s)
    by = (
        ("granted by the network", "网络分配")
        if psm.source == "network"
        else ("requested", "请求值")
    )
    return (
        f"on: periodic TAU {tau[0]}, active time {active[0]} ({by[0]})",
        f"开启：周期性 TAU {tau[1]}，激活时间 {active[1]}（{by[1]}）",
    )


def parse_cpsms(lines: list[str]) -> ModemPsm | None:
    """The requested PSM timers of an ``AT+CPSMS?`` answer
    (``+CPSMS:<mode>,[<RAU>],[<GPRS-READY>],[<TAU>],[<Active-Time>]``); None if it has none."""
    rows = [split_fields(strip_prefix(line, "+CPSMS")) for line in lines]
    if not rows or not rows[0] or rows[0][0] not in ("0", "1"):
        return None
    fields = rows[0]
    tau = fields[3] if len(fields) > 3 and fields[3] else None
    active = fields[4] if len(fields) > 4 and fields[4] else None
    return ModemPsm(
        enabled=fields[0] == "1",
        periodic_tau_s=decode_t3412(tau) if tau else None,
        active_time_s=decode_t3324(active) if active else None,
        source="requested",
    )


def parse_cereg_timers(fields: list[str]) -> tuple[int | None, int | None] | None:
    """The network-granted ``(periodic TAU, active time)`` of an ``AT+CEREG?`` answer in mode
    4 (``<n>,<stat>,<tac>,<ci>,<AcT>,<cause_type>,<reject_cause>,<Active-Time>,<Periodic-TAU>``);
    None when the answer carries no timers."""
    if len(fields) < 9 or not fields[7] or not fields[8]:
        return None
    return decode_t3412(fields[8]), decode_t3324(fields[7])


# -- radio statistics, identity -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RadioStats:
    """``AT+NUESTATS`` (BC95): RSRP ("Signal power") and SNR, in dBm and dB; None: not given."""

    rsrp_dbm: float | None = None
    snr_db: float | None = None
    ecl: int | None = None
    cell_id: str | None = None


_UNKNOWN_CB = -32768  # what BC95 reports for a figure it has not measured


def parse_nuestats(lines: list[str]) -> RadioStats:
    """BC95's ``Signal power:-907`` / ``SNR:58`` lines (centibels), or BC95-G's
    ``NUESTATS:RADIO,Signal power,-907``."""
    values: dict[str, str] = {}
    for line in lines:
        text = line.lstrip("+")
        if text.upper().startswith("NUESTATS:"):
            parts = split_fields(text.partition(":")[2])
            if len(parts) >= 3:
                values[parts[1].strip().lower()] = parts[2]
            continue
        name, colon, value = text.partition(":")
        if colon:
            values[name.strip().lower()] = value.strip()

    def centi(name: str) -> float | None:
        raw = values.get(name)
        if raw is None:
            return None
        try:
            number = int(raw)
        except ValueError:
            raise ProtocolError(f"AT+NUESTATS: {name} {raw!r} is not an integer") from None
        return None if number == _UNKNOWN_CB else number / 10

    ecl = values.get("ecl")
    return RadioStats(
        rsrp_dbm=centi("signal power"),
        snr_db=centi("snr"),
        ecl=int(ecl) if ecl is not None and ecl.lstrip("-").isdigit() else None,
        cell_id=values.get("cell id") or None,
    )


def parse_firmware(lines: list[str]) -> tuple[str | None, str | None]:
    """``(model, firmware revision)`` from ``ATI`` (``Quectel`` / ``BC95HB-02-STD_900`` /
    ``Revision:BC95HBR01A01``) or ``AT+CGMR`` (``APPLICATION,V100R100C10B657SP3``)."""
    model: str | None = None
    revision: str | None = None
    for line in lines:
        text = strip_prefix(line, "+CGMR")
        upper = text.upper()
        if upper.startswith("REVISION"):
            revision = text.partition(":")[2].strip() or revision
        elif upper.startswith("APPLICATION,"):
            revision = text.partition(",")[2].strip() or revision
        elif upper not in ("QUECTEL", "QUECTEL_LTD") and "," not in text:
            model = text
    return model, revision


def parse_nband(lines: list[str]) -> list[int]:
    """The bands of an ``AT+NBAND?`` answer (``+NBAND:5,8,20``)."""
    bands: list[int] = []
    for line in lines:
        for value in split_fields(strip_prefix(line, "+NBAND")):
            if not value.isdigit():
                raise ProtocolError(f"AT+NBAND?: {line!r} is not a list of bands")
            bands.append(int(value))
    return bands


# -- the report ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """A CoAP ping (empty CON) to ``host``:``port`` through the modem's UDP socket."""

    host: str
    port: int
    reached: bool
    latency_ms: float | None = None
    answer: str | None = None  # RST or ACK
    attempts: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModemReport:
    """Everything the modem said, decoded (``modem_probe.read_report``)."""

    imei: str
    checked_at: int  # ms since the epoch
    sim: SimState
    iccid: str | None
    sim_error: int | None  # the +CME ERROR code of the ICCID query
    csq: int
    ber: int
    stat: int
    attached: bool
    model: str | None = None
    firmware: str | None = None
    bands: tuple[int, ...] = ()
    radio: RadioStats = field(default_factory=RadioStats)
    psm: ModemPsm | None = None
    round_trip: RoundTrip | None = None

    @property
    def rssi_dbm(self) -> int | None:
        return csq_dbm(self.csq)

    @property
    def quality(self) -> ModemQuality:
        return signal_quality(self.rssi_dbm)

    @property
    def registration(self) -> ModemRegistration:
        return registration_code(self.stat)

    @property
    def registered(self) -> bool:
        return self.stat in (1, 5)


#: SIM errors of TS 27.007 (+CME ERROR) an ICCID query answers.
SIM_ERRORS: dict[int, Words] = {
    10: ("SIM not inserted", "未插入 SIM 卡"),
    11: ("SIM PIN required", "需要 SIM PIN 码"),
    12: ("SIM PUK required", "需要 SIM PUK 码"),
    13: ("SIM failure", "SIM 卡故障"),
    14: ("SIM busy", "SIM 卡忙"),
    15: ("SIM wrong", "SIM 卡不匹配"),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """One finding of a modem check: a stable ``code``, its level and what it is about."""

    code: str
    level: Level
    detail: dict[str, str | int | float] = field(default_factory=dict)


def verdicts(report: ModemReport, *, round_trip_wanted: bool = True) -> list[Verdict]:
    """The findings, failures first (the first is the verdict); ``ok`` when nothing fails.

    ``round_trip_wanted`` False (the agent, whose uplink is its round trip): no finding about
    a missing round trip.
    """
    found = [*_sim_and_network(report), *_signal(report), *_round_trip(report, round_trip_wanted)]
    if report.psm is not None and report.psm.enabled and report.psm.periodic_tau_s is None:
        found.append(Verdict("psm_tau_deactivated", "warning"))
    fails = [v for v in found if v.level == "fail"]
    warnings = [v for v in found if v.level != "fail"]
    if fails:
        return fails + warnings
    trip = report.round_trip
    detail: dict[str, str | int | float] = {"dbm": report.rssi_dbm or 0, "quality": report.quality}
    if trip is not None and trip.latency_ms is not None:
        detail["latency_ms"] = round(trip.latency_ms)
    return [Verdict("ok", "ok", detail), *warnings]


def _sim_and_network(report: ModemReport) -> list[Verdict]:
    found: list[Verdict] = []
    if report.sim == "missing":
        found.append(Verdict("no_sim", "fail"))
    elif report.sim == "error":
        found.append(Verdict("sim_error", "fail", {"cme": report.sim_error or 0}))
    if report.stat == 3:
        found.append(Verdict("registration_denied", "fail", {"iccid": report.iccid or ""}))
    elif not report.registered and report.sim != "missing":
        found.append(Verdict("not_registered", "fail", {"stat": report.stat}))
    if report.registered and not report.attached:
        found.append(Verdict("not_attached", "fail"))
    if report.stat == 5:
        found.append(Verdict("roaming", "warning"))
    return found


def _signal(report: ModemReport) -> list[Verdict]:
    if not report.registered:
        return []  # not registered says it all
    dbm = report.rssi_dbm or 0
    return {
        "no_signal": [Verdict("no_signal", "fail")],
        "poor": [Verdict("weak_signal", "fail", {"dbm": dbm})],
        "fair": [Verdict("fair_signal", "warning", {"dbm": dbm})],
    }.get(report.quality, [])


def _round_trip(report: ModemReport, wanted: bool) -> list[Verdict]:
    trip = report.round_trip
    if not (report.registered and report.attached):
        return []
    if trip is None:
        return [Verdict("round_trip_skipped", "warning")] if wanted else []
    if trip.reached:
        return []
    detail: dict[str, str | int | float] = {
        "host": trip.host,
        "port": trip.port,
        "error": trip.error or "",
    }
    return [Verdict("hub_unreachable", "fail", detail)]


def unreachable_verdict(
    reason: str, kind: Literal["not_answering", "garbled", "refused"] = "not_answering"
) -> Verdict:
    """The verdict when the modem could not be asked (no report): it does not answer (gone,
    timeout), answers what cannot be read, or refuses a basic query."""
    return Verdict(f"modem_{kind}", "fail", {"reason": reason})


def overall_level(found: list[Verdict]) -> Level:
    levels = {v.level for v in found}
    return "fail" if "fail" in levels else "warning" if "warning" in levels else "ok"


Detail = dict[str, str | int | float]


def _ok(d: Detail) -> Words:
    quality = _QUALITY_BY_NAME.get(str(d.get("quality")), ("", ""))
    en = f"ok: registered, {d['dbm']} dBm ({quality[0]})"
    zh = f"正常：已注册，{d['dbm']} dBm（{quality[1]}）"
    if "latency_ms" in d:
        en, zh = (
            f"{en}, hub reached in {d['latency_ms']} ms",
            f"{zh}，{d['latency_ms']} 毫秒到达平台",
        )
    return en, zh


def _sim_error(d: Detail) -> Words:
    code = int(d["cme"])
    what = SIM_ERRORS.get(code, (f"+CME ERROR {code}", f"+CME ERROR {code}"))
    return (
        f"SIM not usable ({what[0]}): reseat or replace the SIM",
        f"SIM 卡不可用（{what[1]}）：请重新插好或更换 SIM 卡",
    )


#: ``+CEREG`` ``<stat>`` of a modem not registered -> what it means.
_UNREGISTERED: dict[int, Words] = {
    0: ("the modem is not searching", "模组未在搜索网络"),
    2: ("still searching", "仍在搜索网络"),
    4: ("out of coverage", "不在覆盖范围内"),
}


def _not_registered(d: Detail) -> Words:
    stat = int(d["stat"])
    state = _UNREGISTERED.get(stat, registration_words(stat))
    return (
        f"not registered ({state[0]}): no coverage or SIM not activated; wait a minute "
        "(--wait 60) or move the device",
        f"未注册（{state[1]}）：无网络覆盖或 SIM 卡未开通；请稍等一分钟（--wait 60）或移动设备",
    )


#: verdict code -> its words (with what to do), from the verdict's detail.
_WORDS: dict[str, Callable[[Detail], Words]] = {
    "ok": _ok,
    "modem_not_answering": lambda d: (
        f"modem not answering: unplugged, wrong port or wrong baud rate ({d['reason']})",
        f"模组无应答：未连接、串口错误或波特率错误（{d['reason']}）",
    ),
    "modem_garbled": lambda d: (
        f"modem answers garbage: wrong baud rate, or not an AT modem ({d['reason']})",
        f"模组应答无法识别：波特率错误或不是 AT 模组（{d['reason']}）",
    ),
    "modem_refused": lambda d: (
        f"modem refuses a basic query ({d['reason']}): power the modem off and on, then check again",
        f"模组拒绝基本查询（{d['reason']}）：请断电重启模组后再检查",
    ),
    "no_sim": lambda d: (
        "no SIM card: insert or reseat the SIM",
        "无 SIM 卡：请插入或重新插好 SIM 卡",
    ),
    "sim_error": _sim_error,
    "registration_denied": lambda d: (
        "registration denied: the network refuses this SIM; ask the operator to activate it "
        f"(ICCID {d['iccid'] or '?'})",
        f"注册被拒绝：网络拒绝此 SIM 卡，请联系运营商开通（ICCID {d['iccid'] or '?'}）",
    ),
    "not_registered": _not_registered,
    "no_signal": lambda d: (
        "no signal: check that the antenna is connected",
        "无信号：请检查天线是否连接",
    ),
    "weak_signal": lambda d: (
        f"signal too weak ({d['dbm']} dBm): move the antenna or the device",
        f"信号太弱（{d['dbm']} dBm）：请调整天线或设备位置",
    ),
    "fair_signal": lambda d: (
        f"signal fair ({d['dbm']} dBm): it works; a better antenna position saves battery",
        f"信号一般（{d['dbm']} dBm）：可以工作；改善天线位置可以省电",
    ),
    "not_attached": lambda d: (
        "registered but not attached for data: check the APN with the operator",
        "已注册但未附着数据业务：请与运营商核对 APN",
    ),
    "roaming": lambda d: (
        "roaming: check that the SIM is the intended operator's",
        "漫游中：请确认 SIM 卡属于预期运营商",
    ),
    "hub_unreachable": lambda d: (
        f"hub not reached at {d['host']}:{d['port']} ({d['error']}): check the hub address, "
        "the APN and the operator's firewall",
        f"无法到达平台 {d['host']}:{d['port']}（{d['error']}）：请检查平台地址、APN 和运营商防火墙",
    ),
    "round_trip_skipped": lambda d: (
        "no round trip tried: give the hub with --hub coap://host:port",
        "未测试往返：请用 --hub coap://主机:端口 指定平台",
    ),
    "psm_tau_deactivated": lambda d: (
        "PSM periodic TAU deactivated: the sensor may not wake to report",
        "PSM 周期性 TAU 已停用：传感器可能不会按时唤醒上报",
    ),
}


def verdict_words(v: Verdict) -> Words:
    """What a verdict says to a person, with what to do."""
    words = _WORDS.get(v.code)
    return words(v.detail) if words is not None else (v.code, v.code)


def to_health(report: ModemReport, *, verdict: str | None = None) -> ModemHealth:
    """The wire contract's modem figures (the agent's health) from a report."""
    return ModemHealth(
        imei=report.imei,
        iccid=report.iccid,
        firmware=report.firmware,
        bands=list(report.bands),
        csq=report.csq,
        rssi_dbm=report.rssi_dbm,
        rsrp_dbm=report.radio.rsrp_dbm,
        snr_db=report.radio.snr_db,
        quality=report.quality,
        registration=report.registration,
        attached=report.attached,
        psm=report.psm,
        verdict=verdict or verdicts(report, round_trip_wanted=False)[0].code,
        checked_at=report.checked_at,
    )
