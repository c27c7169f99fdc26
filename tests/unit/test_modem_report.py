"""What a modem's answers mean (drivers/nbiot/modem_report.py): CSQ, CEREG, PSM timers,
radio statistics, identity, and which verdict a check gives."""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)

from __future__ import annotations

import dataclasses

import pytest

from device_profiles.wire import AgentHealth, ModemHealth, ModemPsm, decode, encode
from drivers.errors import ProtocolError
from drivers.nbiot.modem_report import (
    REGISTRATION,
    ModemReport,
    RadioStats,
    RoundTrip,
    csq_dbm,
    decode_t3324,
    decode_t3412,
    duration_words,
    overall_level,
    parse_cereg_timers,
    parse_cpsms,
    parse_firmware,
    parse_nband,
    parse_nuestats,
    psm_words,
    registration_code,
    registration_words,
    signal_quality,
    to_health,
    unreachable_verdict,
    verdict_words,
    verdicts,
)

pytestmark = pytest.mark.unit


# -- CSQ ----------------------------------------------------------------------------------


def test_every_csq_value_has_its_dbm() -> None:
    assert [csq_dbm(n) for n in range(32)] == list(range(-113, -50, 2))
    assert csq_dbm(99) is None


@pytest.mark.parametrize("bad", [-1, 32, 98, 100])
def test_a_csq_outside_the_standard_is_a_protocol_error(bad: int) -> None:
    with pytest.raises(ProtocolError, match="outside 0-31"):
        csq_dbm(bad)


@pytest.mark.parametrize(
    ("csq", "quality"),
    [
        (31, "excellent"),
        (24, "excellent"),
        (23, "good"),
        (21, "good"),  # -71 dBm
        (15, "good"),
        (14, "fair"),
        (7, "fair"),
        (6, "poor"),
        (3, "poor"),  # -107 dBm
        (1, "poor"),
        (0, "no_signal"),  # -113 dBm or less
        (99, "no_signal"),  # not known
    ],
)
def test_quality_words_follow_the_table(csq: int, quality: str) -> None:
    assert signal_quality(csq_dbm(csq)) == quality


# -- CEREG --------------------------------------------------------------------------------


def test_every_cereg_state_has_a_code_and_words_in_both_languages() -> None:
    codes = [registration_code(stat) for stat in range(6)]
    assert codes == [
        "not_searching",
        "registered_home",
        "searching",
        "denied",
        "unknown",
        "registered_roaming",
    ]
    assert registration_words(1) == ("registered, home network", "已注册，本地网络")
    assert registration_words(2)[0] == "not registered, searching"
    assert registration_words(3)[0] == "registration denied"
    assert registration_code(7) == "other"
    for _code, (en, zh) in REGISTRATION.values():
        assert en and zh and en != zh


# -- PSM timers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "seconds"),
    [
        ("00000101", 5 * 600),  # 10 min units
        ("00100110", 6 * 3600),  # 1 h
        ("01000011", 3 * 36000),  # 10 h
        ("01100111", 7 * 2),  # 2 s
        ("10000100", 4 * 30),  # 30 s
        ("10111111", 31 * 60),  # 1 min
        ("11000001", 320 * 3600),  # 320 h
        ('"00111000"', 24 * 3600),  # quoted, as some modems answer
        ("11100000", None),  # deactivated
        ("11111111", None),
    ],
)
def test_t3412_periodic_tau(bits: str, seconds: int | None) -> None:
    assert decode_t3412(bits) == seconds


@pytest.mark.parametrize(
    ("bits", "seconds"),
    [
        ("00000101", 10),  # 2 s units
        ("00100001", 60),  # 1 min
        ("01000010", 2 * 360),  # decihours
        ("01100011", 3 * 60),  # other units: 1 min in this version of TS 24.008
        ("11100000", None),  # deactivated
    ],
)
def test_t3324_active_time(bits: str, seconds: int | None) -> None:
    assert decode_t3324(bits) == seconds


@pytest.mark.parametrize("bad", ["", "0010011", "001001100", "0010012x", "abcdefgh"])
def test_a_timer_that_is_not_8_bits_is_a_protocol_error(bad: str) -> None:
    with pytest.raises(ProtocolError, match="8-bit"):
        decode_t3412(bad)
    with pytest.raises(ProtocolError, match="8-bit"):
        decode_t3324(bad)


def test_durations_in_words() -> None:
    assert duration_words(10) == ("10 s", "10 秒")
    assert duration_words(60) == ("1 min", "1 分钟")
    assert duration_words(90) == ("1 min 30 s", "1 分 30 秒")
    assert duration_words(21600) == ("6 h", "6 小时")
    assert duration_words(5400) == ("1 h 30 min", "1 小时 30 分钟")
    assert duration_words(None) == ("deactivated", "已停用")


def test_requested_timers_from_cpsms() -> None:
    psm = parse_cpsms(["+CPSMS:1,,,00111000,00100010"])
    assert psm == ModemPsm(
        enabled=True, periodic_tau_s=86400, active_time_s=120, source="requested"
    )
    assert psm_words(psm)[0] == "on: periodic TAU 24 h, active time 2 min (requested)"
    quoted = parse_cpsms(['+CPSMS: 1,,,"11100000","00000101"'])
    assert quoted is not None and quoted.periodic_tau_s is None and quoted.active_time_s == 10
    off = parse_cpsms(["+CPSMS:0"])
    assert off is not None and not off.enabled and psm_words(off) == ("off", "关闭")
    assert parse_cpsms([]) is None
    assert psm_words(None)[0] == "not known"


def test_granted_timers_from_cereg_mode_4() -> None:
    fields = ["4", "1", "1A2B", "0C3D4E5F", "9", "", "", "00100001", "00100110"]
    assert parse_cereg_timers(fields) == (21600, 60)
    assert parse_cereg_timers(["4", "2"]) is None
    assert parse_cereg_timers(["4", "1", "1A2B", "0C3D4E5F", "9", "", "", "", ""]) is None


# -- radio statistics and identity --------------------------------------------------------


def test_nuestats_bc95_lines_are_centibels() -> None:
    stats = parse_nuestats(
        ["Signal power:-907", "Total power:-801", "Cell ID:21450498", "ECL:1", "SNR:58"]
    )
    assert stats == RadioStats(rsrp_dbm=-90.7, snr_db=5.8, ecl=1, cell_id="21450498")


def test_nuestats_bc95g_radio_lines_and_unknown_figures() -> None:
    stats = parse_nuestats(["NUESTATS:RADIO,Signal power,-1003", "NUESTATS:RADIO,SNR,-32768"])
    assert stats.rsrp_dbm == -100.3
    assert stats.snr_db is None  # -32768: not measured
    with pytest.raises(ProtocolError):
        parse_nuestats(["Signal power:strong"])


def test_firmware_from_ati_and_cgmr() -> None:
    assert parse_firmware(["Quectel", "BC95HB-02-STD_900", "Revision:BC95HBR01A01"]) == (
        "BC95HB-02-STD_900",
        "BC95HBR01A01",
    )
    _model, revision = parse_firmware(
        ["SECURITY,V100R100C10B657SP3", "APPLICATION,V100R100C10B657SP3"]
    )
    assert revision == "V100R100C10B657SP3"


def test_bands() -> None:
    assert parse_nband(["+NBAND:8"]) == [8]
    assert parse_nband(["+NBAND: 5,8,20"]) == [5, 8, 20]
    with pytest.raises(ProtocolError):
        parse_nband(["+NBAND:eight"])


# -- verdicts -----------------------------------------------------------------------------

GOOD = ModemReport(
    imei="866123045678901",
    checked_at=1_700_000_000_000,
    sim="ready",
    iccid="89860425102180012345",
    sim_error=None,
    csq=21,
    ber=99,
    stat=1,
    attached=True,
    firmware="BC95HBR01A01",
    bands=(8,),
    psm=ModemPsm(enabled=True, periodic_tau_s=21600, active_time_s=60, source="network"),
    round_trip=RoundTrip("203.0.113.7", 5683, True, 182.4, "RST", 1),
)


def codes(report: ModemReport, **kwargs: bool) -> list[str]:
    return [v.code for v in verdicts(report, **kwargs)]


def test_ok_says_registration_signal_and_latency() -> None:
    found = verdicts(GOOD)
    assert [v.code for v in found] == ["ok"]
    assert verdict_words(found[0]) == (
        "ok: registered, -71 dBm (good), hub reached in 182 ms",
        "正常：已注册，-71 dBm（良好），182 毫秒到达平台",
    )
    assert overall_level(found) == "ok"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sim": "missing", "iccid": None, "sim_error": 10, "stat": 0, "attached": False}, ["no_sim"]),
        ({"sim": "error", "sim_error": 13, "stat": 0, "attached": False}, ["sim_error", "not_registered"]),
        ({"stat": 2, "attached": False, "round_trip": None}, ["not_registered"]),
        ({"stat": 0, "attached": False}, ["not_registered"]),
        ({"stat": 4, "attached": False}, ["not_registered"]),
        ({"stat": 3, "attached": False}, ["registration_denied"]),
        ({"csq": 3}, ["weak_signal"]),
        ({"csq": 0}, ["no_signal"]),
        ({"csq": 99}, ["no_signal"]),
        ({"csq": 10}, ["ok", "fair_signal"]),
        ({"stat": 5}, ["ok", "roaming"]),
        ({"attached": False}, ["not_attached"]),
        ({"round_trip": RoundTrip("203.0.113.7", 5683, False, error="no answer")}, ["hub_unreachable"]),
        ({"round_trip": None}, ["ok", "round_trip_skipped"]),
        ({"csq": 3, "round_trip": RoundTrip("203.0.113.7", 5683, False, error="x")}, ["weak_signal", "hub_unreachable"]),
        (
            {"psm": ModemPsm(enabled=True, periodic_tau_s=None, active_time_s=60, source="network")},
            ["ok", "psm_tau_deactivated"],
        ),
    ],
)  # fmt: skip
def test_the_verdict_choice(changes: dict[str, object], expected: list[str]) -> None:
    report = dataclasses.replace(GOOD, **changes)  # type: ignore[arg-type]
    found = verdicts(report)
    assert [v.code for v in found] == expected
    assert overall_level(found) == ("fail" if found[0].level == "fail" else found[-1].level)


def test_the_agent_asks_for_no_round_trip() -> None:
    assert codes(dataclasses.replace(GOOD, round_trip=None), round_trip_wanted=False) == ["ok"]


def test_verdict_words_say_what_to_do() -> None:
    def words(report: ModemReport) -> str:
        return verdict_words(verdicts(report)[0])[0]

    assert words(dataclasses.replace(GOOD, csq=2)) == (
        "signal too weak (-109 dBm): move the antenna or the device"
    )
    no_sim = dataclasses.replace(GOOD, sim="missing", iccid=None, stat=0, attached=False)
    assert words(no_sim) == "no SIM card: insert or reseat the SIM"
    searching = dataclasses.replace(GOOD, stat=2, attached=False)
    assert words(searching).startswith("not registered (still searching): no coverage or SIM")
    pin = dataclasses.replace(GOOD, sim="error", sim_error=11, stat=0, attached=False)
    assert words(pin) == "SIM not usable (SIM PIN required): reseat or replace the SIM"
    gone = unreachable_verdict("port not found")
    assert verdict_words(gone)[0] == (
        "modem not answering: unplugged, wrong port or wrong baud rate (port not found)"
    )
    assert verdict_words(unreachable_verdict("x", "garbled"))[0].startswith("modem answers garbage")
    assert verdict_words(unreachable_verdict("x", "refused"))[0].startswith("modem refuses")


def test_every_verdict_speaks_both_languages() -> None:
    reports = [
        GOOD,
        dataclasses.replace(GOOD, sim="missing", stat=0, attached=False),
        dataclasses.replace(GOOD, sim="error", sim_error=13, stat=2, attached=False),
        dataclasses.replace(GOOD, stat=3, attached=False),
        dataclasses.replace(GOOD, stat=5, csq=10, attached=False),
        dataclasses.replace(GOOD, csq=0),
        dataclasses.replace(GOOD, csq=3, round_trip=RoundTrip("h", 1, False, error="e")),
        dataclasses.replace(
            GOOD,
            round_trip=None,
            psm=ModemPsm(enabled=True, periodic_tau_s=None, active_time_s=None, source="network"),
        ),
    ]
    found = [v for r in reports for v in verdicts(r)]
    found += [unreachable_verdict("r", k) for k in ("not_answering", "garbled", "refused")]
    seen = {v.code for v in found}
    assert len(seen) == 16
    for v in found:
        en, zh = verdict_words(v)
        assert en != v.code and zh != v.code and en != zh, v


# -- the wire contract --------------------------------------------------------------------


def test_the_health_carries_the_modem_figures_over_the_wire() -> None:
    modem = to_health(GOOD)
    assert modem == ModemHealth(
        imei="866123045678901",
        iccid="89860425102180012345",
        firmware="BC95HBR01A01",
        bands=[8],
        csq=21,
        rssi_dbm=-71,
        quality="good",
        registration="registered_home",
        attached=True,
        psm=GOOD.psm,
        verdict="ok",
        checked_at=1_700_000_000_000,
    )
    health = AgentHealth(agent_id="nb-1", ts=1, modem=modem)
    assert decode(AgentHealth, encode(health)) == health
    assert "modem" not in encode(AgentHealth(agent_id="cab-1", ts=1)).decode()
    weak = to_health(dataclasses.replace(GOOD, csq=3))
    assert (weak.verdict, weak.quality, weak.rssi_dbm) == ("weak_signal", "poor", -107)
