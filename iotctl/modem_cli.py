"""``iotctl modem``: an NB-IoT sensor's modem checked on site, no AT terminal needed.

    iotctl modem check /dev/ttyUSB0 --hub coap://203.0.113.7:5683
    iotctl modem check /dev/ttyUSB0 --host 203.0.113.7:5683 --json
    iotctl modem check /dev/ttyUSB0 --wait 60        # give a fresh modem time to register
    iotctl --lang zh modem check /dev/ttyUSB0

It reads the modem through the project's AT driver (:class:`drivers.nbiot.NbIotModem`,
:mod:`drivers.nbiot.modem_probe`), decodes what it says with :mod:`drivers.nbiot.modem_report`
(the same module the NB-IoT agent's health uses) and pings the hub's CoAP ingress through the
modem's own UDP socket (an empty CON message, answered by RST).

Exit codes: 0 ok (warnings included); 1 a failing verdict (the modem does not answer, no SIM,
not registered, signal too weak, hub not reached, ...); 2 bad arguments.
"""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drivers.errors import DriverError, ProtocolError
from drivers.nbiot import AtCommandError, NbIotModem, NbIotModemSettings
from drivers.nbiot.modem_probe import coap_ping, read_report
from drivers.nbiot.modem_report import (
    QUALITY_WORDS,
    ModemReport,
    RoundTrip,
    Verdict,
    Words,
    overall_level,
    psm_words,
    registration_words,
    unreachable_verdict,
    verdict_words,
    verdicts,
)
from iot_runtime import configure_logging
from iotctl.language import say

__all__ = ["app"]

app = typer.Typer(help="NB-IoT modems: check a sensor's modem on site.", no_args_is_help=True)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

COAP_PORT = 5683


def _words(pair: Words) -> str:
    return say(pair[0], pair[1])


# -- arguments ----------------------------------------------------------------------------


def _host_port(text: str, option: str) -> tuple[str, int]:
    if text.startswith("["):
        raise typer.BadParameter(
            say("the modem reaches IPv4 hosts only", "模组只能访问 IPv4 地址"), param_hint=option
        )
    name, colon, port_text = text.rpartition(":")
    if not colon:
        name, port_text = text, str(COAP_PORT)
    if not name or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise typer.BadParameter(
            say(f"{text!r} is not host:port", f"{text!r} 不是 主机:端口"), param_hint=option
        )
    return name, int(port_text)


def _target(hub: str | None, host: str | None) -> tuple[str, int] | None:
    """The (name, port) to ping: from ``--hub coap://host:port`` or ``--host host:port``."""
    if hub is not None and host is not None:
        raise typer.BadParameter(
            say("give --hub or --host, not both", "--hub 和 --host 只能给一个"), param_hint="--host"
        )
    if host is not None:
        return _host_port(host, "--host")
    if hub is None:
        return None
    parts = urlsplit(hub)
    if parts.scheme != "coap" or not parts.netloc or parts.path not in ("", "/"):
        raise typer.BadParameter(
            say(f"{hub!r} is not coap://host:port", f"{hub!r} 不是 coap://主机:端口"),
            param_hint="--hub",
        )
    return _host_port(parts.netloc, "--hub")


def _resolve(name: str, port: int) -> str:
    """The IPv4 address of ``name`` (the modem sends to addresses, it has no DNS here)."""
    infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_DGRAM)
    return str(infos[0][4][0])


# -- the check ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Outcome:
    report: ModemReport | None
    found: list[Verdict]


_STEPS: dict[str, Words] = {
    "identity": ("reading the modem's identity and SIM", "读取模组标识和 SIM 卡"),
    "signal": ("reading the signal", "读取信号"),
    "network": ("reading the network registration", "读取网络注册状态"),
    "psm": ("reading the power saving timers", "读取省电定时器"),
}


async def _check(
    settings: NbIotModemSettings,
    target: tuple[str, int] | None,
    wait_s: float,
    timeout_s: float,
    progress: Callable[[str], None],
) -> _Outcome:
    def step(name: str) -> None:
        progress(_words(_STEPS[name]))

    try:
        async with NbIotModem(settings) as modem:
            report = await read_report(modem, step)
            if wait_s > 0 and not report.registered and report.sim != "missing":
                progress(
                    say(
                        f"waiting for the network (up to {wait_s:g} s)",
                        f"等待网络注册（最多 {wait_s:g} 秒）",
                    )
                )
                with contextlib.suppress(TimeoutError):
                    await modem.wait_registered(wait_s, poll_s=2.0)
                report = await read_report(modem, step)
            if target is not None and report.registered and report.attached:
                report = dataclasses.replace(
                    report, round_trip=await _round_trip(modem, target, timeout_s, progress)
                )
    except AtCommandError as exc:
        return _Outcome(None, [unreachable_verdict(str(exc), "refused")])
    except ProtocolError as exc:
        return _Outcome(None, [unreachable_verdict(str(exc), "garbled")])
    except DriverError as exc:  # ModemGone, AtTimeout, ModemRestarted
        return _Outcome(None, [unreachable_verdict(str(exc))])
    return _Outcome(report, verdicts(report))


async def _round_trip(
    modem: NbIotModem, target: tuple[str, int], timeout_s: float, progress: Callable[[str], None]
) -> RoundTrip:
    name, port = target
    progress(
        say(
            f"CoAP ping to {name}:{port} through the modem",
            f"通过模组向 {name}:{port} 发送 CoAP ping",
        )
    )
    try:
        address = await asyncio.to_thread(_resolve, name, port)
    except OSError as exc:
        return RoundTrip(name, port, False, error=f"cannot resolve {name!r}: {exc}")
    return await coap_ping(modem, address, port, ack_timeout_s=timeout_s / 7, attempts=3)


# -- output -------------------------------------------------------------------------------


def _report_json(report: ModemReport) -> dict[str, Any]:
    facts = dataclasses.asdict(report)
    facts.pop("round_trip")
    facts["psm"] = report.psm.model_dump() if report.psm is not None else None
    facts["bands"] = list(report.bands)
    facts |= {
        "rssi_dbm": report.rssi_dbm,
        "quality": report.quality,
        "registration": report.registration,
        "registration_text": registration_words(report.stat)[0],
    }
    return facts


def _finding_json(v: Verdict) -> dict[str, Any]:
    return {"code": v.code, "level": v.level, "message": verdict_words(v)[0], "detail": v.detail}


def _print_json(port: str, outcome: _Outcome) -> None:
    report = outcome.report
    trip = report.round_trip if report is not None else None
    document = {
        "port": port,
        "level": overall_level(outcome.found),
        "verdict": _finding_json(outcome.found[0]),
        "findings": [_finding_json(v) for v in outcome.found],
        "modem": _report_json(report) if report is not None else None,
        "round_trip": dataclasses.asdict(trip) if trip is not None else None,
    }
    typer.echo(json.dumps(document, ensure_ascii=False))


def _signal_text(report: ModemReport) -> str:
    quality = _words(QUALITY_WORDS[report.quality])
    if report.rssi_dbm is None:
        return f"{say('not known', '未知')} (CSQ {report.csq}), {quality}"
    return f"{report.rssi_dbm} dBm (CSQ {report.csq}), {quality}"


def _trip_text(trip: RoundTrip) -> str:
    where = f"{trip.host}:{trip.port}"
    if trip.reached:
        tries = (
            say(f"{trip.attempts} try", f"{trip.attempts} 次")
            if trip.attempts == 1
            else say(f"{trip.attempts} tries", f"{trip.attempts} 次")
        )
        return say(
            f"{where} in {trip.latency_ms:g} ms (CoAP ping answered by {trip.answer}, {tries})",
            f"{where}，{trip.latency_ms:g} 毫秒（CoAP ping 应答 {trip.answer}，{tries}）",
        )
    return say(f"{where} not reached: {trip.error}", f"{where} 未到达：{trip.error}")


def _print_table(port: str, report: ModemReport) -> None:
    table = Table(say("modem", "模组"), say(f"on {port}", f"串口 {port}"), show_lines=False)
    no_sim = (
        say("no SIM", "无 SIM 卡") if report.sim == "missing" else say("not readable", "无法读取")
    )
    unknown = say("not known", "未知")
    rows: list[tuple[str, str]] = [
        ("IMEI", report.imei),
        ("ICCID", report.iccid or no_sim),
        (say("model", "型号"), report.model or unknown),
        (say("firmware", "固件"), report.firmware or unknown),
        (say("bands", "频段"), ", ".join(str(b) for b in report.bands) or unknown),
        (say("signal", "信号"), _signal_text(report)),
    ]
    radio = report.radio
    if radio.rsrp_dbm is not None:
        rows.append(("RSRP", f"{radio.rsrp_dbm:g} dBm"))
    if radio.snr_db is not None:
        rows.append(("SNR", f"{radio.snr_db:g} dB"))
    if radio.ecl is not None and report.registered:
        rows.append(("ECL", str(radio.ecl)))
    attached = say("attached", "已附着") if report.attached else say("not attached", "未附着")
    rows += [
        (
            say("network", "网络"),
            f"{_words(registration_words(report.stat))} (CEREG {report.stat})",
        ),
        (say("data", "数据业务"), f"{attached} (CGATT {int(report.attached)})"),
        (say("power saving", "省电模式 PSM"), _words(psm_words(report.psm))),
    ]
    if report.round_trip is not None:
        rows.append((say("hub round trip", "平台往返"), _trip_text(report.round_trip)))
    for name, value in rows:
        table.add_row(name, escape(value))
    out.print(table)


def _print_human(port: str, outcome: _Outcome) -> None:
    if outcome.report is not None:
        _print_table(port, outcome.report)
    for index, v in enumerate(outcome.found):
        text = escape(_words(verdict_words(v)))
        if v.level == "fail":
            out.print(f"[bold red]{text}[/]" if index == 0 else f"[red]{text}[/]")
        elif v.level == "warning":
            out.print(f"[yellow]{say('warning', '警告')}: {text}[/]")
        else:
            out.print(f"[bold green]{text}[/]")


# -- the command --------------------------------------------------------------------------


@app.command()
def check(
    port: Annotated[str, typer.Argument(help="The modem's serial port (/dev/ttyUSB0).")],
    baud: Annotated[int, typer.Option("--baud", min=300, max=4_000_000, help="Baud rate.")] = 9600,
    hub: Annotated[
        str | None,
        typer.Option(
            "--hub",
            envvar="IOTCTL_HUB_COAP",
            help="The hub's CoAP ingress to ping through the modem: coap://host:port.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="Ping this host:port instead (any CoAP endpoint).", show_default=False
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(min=0, max=600, help="Seconds to wait for the network if not registered yet."),
    ] = 0.0,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1, max=300, help="Seconds the hub round trip may take (3 tries, 1:2:4)."
        ),
    ] = 14.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the facts as JSON.")] = False,
    log_level: Annotated[
        str, typer.Option(help="Log level (DEBUG shows every AT command and answer).")
    ] = "CRITICAL",
) -> None:
    """Check an NB-IoT modem: identity, SIM, signal, registration, PSM timers, hub round trip."""
    target = _target(hub, host)
    try:
        configure_logging(log_level, "console")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from None
    settings = NbIotModemSettings(
        port=port,
        baudrate=baud,
        command_timeout_s=2.0,
        init_timeout_s=3.0,
        socket_timeout_s=5.0,
    )
    opening = say(f"opening {port} at {baud} baud", f"打开 {port}，波特率 {baud}")
    with err.status(escape(opening)) as status:

        def progress(text: str) -> None:
            status.update(escape(text))

        outcome = asyncio.run(_check(settings, target, wait, timeout, progress))
    if json_out:
        _print_json(port, outcome)
    else:
        _print_human(port, outcome)
    raise typer.Exit(1 if overall_level(outcome.found) == "fail" else 0)
