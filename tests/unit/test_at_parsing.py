"""The AT engine without a port: line splitting, line sorting, response parsing, fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import ConnectError, DeviceException, DriverError, DriverTimeout, ProtocolError
from drivers.nbiot import (
    AtCommandError,
    AtEngine,
    AtResponse,
    AtTimeout,
    ModemGone,
    ModemRestarted,
    NbIotModemSettings,
)
from drivers.nbiot.at import (
    LineSplitter,
    command_prefix,
    fresh,
    parse_final,
    parse_urc,
    split_fields,
    strip_prefix,
)
from drivers.nbiot.modem import parse_cereg, parse_csq, parse_nsorf, rssi_dbm
from firmware_sim.nbiot_modem import format_info, format_nsorf

pytestmark = pytest.mark.unit


# -- a scripted modem ---------------------------------------------------------------------


class ScriptedModem:
    """Answers each command written to the engine with ``script(command) -> bytes``, fed back
    on the next loop iteration (as a port's reader would)."""

    def __init__(self, script: Callable[[str], bytes]) -> None:
        self.script = script
        self.sent: list[str] = []
        self.written = asyncio.Event()
        self.engine = AtEngine(self.write, name="scripted", default_timeout_s=0.5)

    def write(self, data: bytes) -> None:
        command = data.decode("latin-1").rstrip("\r")
        self.sent.append(command)
        self.written.set()
        reply = self.script(command)
        if reply:
            asyncio.get_running_loop().call_soon(self.engine.feed, reply)


def bc95(*lines: str) -> bytes:
    return b"".join(b"\r\n" + line.encode("latin-1") + b"\r\n" for line in lines)


# -- lines --------------------------------------------------------------------------------


def test_splitter_handles_every_line_end() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"\r\n+CSQ:24,99\r\n\r\nOK\r\n") == ["+CSQ:24,99", "OK"]
    assert splitter.feed(b"AT+CSQ\r") == ["AT+CSQ"]
    assert splitter.feed(b"one\ntwo\rthree") == ["one", "two"]
    assert splitter.pending == len(b"three")
    assert splitter.feed(b"\r\n") == ["three"]


def test_splitter_drops_overlong_runs() -> None:
    splitter = LineSplitter(max_line=16)
    assert splitter.feed(b"x" * 40) == []
    assert splitter.overflows == 1
    assert splitter.feed(b"tail of the noise\r\nOK\r\n") == ["OK"]


@given(
    lines=st.lists(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), min_size=1), max_size=8
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_splitter_is_independent_of_chunking(lines: list[str], cuts: list[int]) -> None:
    stream = b"".join(b"\r\n" + line.encode("latin-1") + b"\r\n" for line in lines)
    splitter = LineSplitter()
    out: list[str] = []
    start = 0
    for cut in sorted(c for c in cuts if c <= len(stream)):
        out += splitter.feed(stream[start:cut])
        start = cut
    out += splitter.feed(stream[start:])
    assert out == lines


@pytest.mark.parametrize(
    ("line", "ok", "code"),
    [
        ("OK", True, None),
        ("ERROR", False, None),
        ("+CME ERROR: 4", False, 4),
        ("+CME ERROR:50", False, 50),
        ("+CME ERROR: operation not allowed", False, None),
        ("+CMS ERROR: 500", False, 500),
    ],
)
def test_final_result_codes(line: str, ok: bool, code: int | None) -> None:
    final = parse_final(line)
    assert final is not None
    assert (final.ok, final.cme_code) == (ok, code)


@pytest.mark.parametrize("line", ["+CSQ:24,99", "0,12", "OKAY", "+NSONMI:0,4", "REBOOT_CAUSE_X"])
def test_other_lines_are_not_final(line: str) -> None:
    assert parse_final(line) is None


def test_prefixes_and_fields() -> None:
    assert command_prefix("AT+CEREG?") == "+CEREG"
    assert command_prefix("at+nsorf=0,512") == "+NSORF"
    assert command_prefix("ATE0") is None
    assert strip_prefix("+CSQ: 24,99", "+CSQ") == "24,99"
    assert strip_prefix("+CSQ:24,99", "+CSQ") == "24,99"
    assert strip_prefix("0,4", "+NSOST") == "0,4"
    assert split_fields('1,"IP","iot.example"') == ["1", "IP", "iot.example"]
    urc = parse_urc("+NSONMI:0,12")
    assert (urc.name, urc.fields, urc.is_reset) == ("+NSONMI", ("0", "12"), False)
    assert parse_urc("REBOOT_CAUSE_APPLICATION_AT").is_reset


@given(
    name=st.from_regex(r"\+[A-Z]{2,8}", fullmatch=True),
    fields=st.lists(st.from_regex(r"[0-9A-Za-z.]{1,12}", fullmatch=True), min_size=1),
    space=st.booleans(),
)
def test_info_line_round_trip(name: str, fields: list[str], space: bool) -> None:
    line = format_info(name, ",".join(fields), space=space)
    assert split_fields(strip_prefix(line, name)) == fields
    assert parse_urc(line).fields == tuple(fields)


@given(
    socket=st.integers(0, 6),
    host=st.ip_addresses(v=4).map(str),
    port=st.integers(0, 65535),
    data=st.binary(max_size=512),
    remaining=st.integers(0, 512),
)
def test_nsorf_round_trip(socket: int, host: str, port: int, data: bytes, remaining: int) -> None:
    chunk = parse_nsorf(format_nsorf(socket, host, port, data, remaining))
    assert (chunk.socket, chunk.host, chunk.port, chunk.data, chunk.remaining) == (
        socket,
        host,
        port,
        data,
        remaining,
    )


@given(rssi=st.integers(0, 31), ber=st.integers(0, 99), space=st.booleans())
def test_csq_round_trip(rssi: int, ber: int, space: bool) -> None:
    line = format_info("+CSQ", f"{rssi},{ber}", space=space)
    assert parse_csq(AtResponse("AT+CSQ", (line,))) == (rssi, ber)


def test_rssi_dbm() -> None:
    assert rssi_dbm(0) == -113
    assert rssi_dbm(24) == -65
    assert rssi_dbm(31) == -51
    assert rssi_dbm(99) is None
    with pytest.raises(ProtocolError):
        rssi_dbm(40)
    dbms = [rssi_dbm(n) or 0 for n in range(32)]
    assert dbms == sorted(dbms)


def test_cereg_prefers_the_read_answer_over_an_unsolicited_line() -> None:
    assert parse_cereg(AtResponse("AT+CEREG?", ("+CEREG:0,5",))) == 5
    assert parse_cereg(AtResponse("AT+CEREG?", ("+CEREG: 1", "+CEREG: 1,1"))) == 1
    with pytest.raises(ProtocolError):
        parse_cereg(AtResponse("AT+CEREG?", ()))


@given(line=st.text(max_size=200))
def test_parsers_raise_only_protocol_errors(line: str) -> None:
    for parse in (
        lambda: parse_nsorf(line),
        lambda: parse_csq(AtResponse("AT+CSQ", (line,))),
        lambda: parse_cereg(AtResponse("AT+CEREG?", (line,))),
    ):
        with contextlib.suppress(ProtocolError):
            parse()


def test_error_tree_and_fresh_copies() -> None:
    assert issubclass(AtTimeout, DriverTimeout)
    assert issubclass(AtCommandError, DeviceException)
    assert issubclass(ModemGone, ConnectError)
    assert issubclass(ModemRestarted, ConnectError)
    error = AtCommandError("AT+NSOCL=9", 50, "+CME ERROR:50")
    assert (error.cme_code, error.code, error.name) == (50, 50, "+CME ERROR 50")
    assert "AT+NSOCL=9" in str(error)
    gone = ModemGone("unplugged")
    copy = fresh(gone)
    assert copy is not gone
    assert type(copy) is ModemGone
    assert str(copy) == "unplugged"


def test_settings_refuse_unsafe_values() -> None:
    settings = NbIotModemSettings(port="/dev/ttyUSB0")
    assert settings.endpoint == "nbiot-at:///dev/ttyUSB0"
    with pytest.raises(ValueError, match="apn"):
        NbIotModemSettings(port="/dev/ttyUSB0", apn='evil","x')
    with pytest.raises(ValueError, match="max_datagram"):
        NbIotModemSettings(port="/dev/ttyUSB0", max_datagram=2000)


# -- the engine ---------------------------------------------------------------------------


async def test_echo_is_dropped_and_info_lines_collected() -> None:
    modem = ScriptedModem(lambda command: command.encode() + b"\r" + bc95("+CSQ:24,99", "OK"))
    response = await modem.engine.command("AT+CSQ", expect="+CSQ")
    assert response.lines == ("+CSQ:24,99",)


async def test_urc_during_a_command_is_delivered_and_the_command_completes() -> None:
    modem = ScriptedModem(lambda _: bc95("+CSQ:24,99", "+NSONMI:0,4", "+CEREG:1", "OK"))
    with modem.engine.subscribe() as urcs:
        response = await modem.engine.command("AT+CSQ")
        assert response.lines == ("+CSQ:24,99",)
        first, second = await urcs.get(1.0), await urcs.get(1.0)
    assert (first.name, first.fields) == ("+NSONMI", ("0", "4"))
    assert (second.name, second.fields) == ("+CEREG", ("1",))


async def test_bare_answer_lines_belong_to_the_command() -> None:
    modem = ScriptedModem(lambda _: bc95("0,12", "OK"))
    assert (await modem.engine.command("AT+NSOST=0,1.2.3.4,5,1,00")).first("+NSOST") == ["0", "12"]


async def test_cme_error_and_plain_error() -> None:
    answers = iter([bc95("+CME ERROR: 50"), bc95("ERROR")])
    modem = ScriptedModem(lambda _: next(answers))
    with pytest.raises(AtCommandError) as info:
        await modem.engine.command("AT+NSOCL=9")
    assert info.value.cme_code == 50
    with pytest.raises(AtCommandError) as info:
        await modem.engine.command("AT+BOGUS")
    assert info.value.cme_code is None


async def test_timeout_then_the_engine_resynchronises() -> None:
    answers = {
        "AT+CSQ": b"",  # no answer in time...
        # ...it comes late, during the resynchronisation, which is not fooled by its OK
        "AT+CMEE?": bc95("+CSQ:24,99", "OK", "+CMEE:1", "OK"),
        "AT+CGATT?": bc95("+CGATT:1", "OK"),
    }
    modem = ScriptedModem(answers.__getitem__)
    with modem.engine.subscribe() as urcs:
        with pytest.raises(AtTimeout) as info:
            await modem.engine.command("AT+CSQ", timeout_s=0.05)
        assert info.value.timeout_s == 0.05
        assert (await modem.engine.command("AT+CGATT?")).lines == ("+CGATT:1",)
        assert (await modem.engine.command("AT+CGATT?")).lines == ("+CGATT:1",)
        assert (await urcs.get(1)).line == "+CSQ:24,99"  # the late line, as unsolicited
    assert modem.sent == ["AT+CSQ", "AT+CMEE?", "AT+CGATT?", "AT+CGATT?"]


async def test_a_cancelled_command_also_resynchronises() -> None:
    answers = {
        "AT+CSQ": b"",
        "AT+CMEE?": bc95("+CSQ:1,99", "OK", "+CMEE:1", "OK"),
        "AT": bc95("OK"),
    }
    modem = ScriptedModem(answers.__getitem__)
    pending = asyncio.ensure_future(modem.engine.command("AT+CSQ", timeout_s=5))
    await asyncio.wait_for(modem.written.wait(), 1)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert (await modem.engine.command("AT")).lines == ()
    assert modem.sent == ["AT+CSQ", "AT+CMEE?", "AT"]


async def test_resync_tolerates_a_stray_error() -> None:
    answers = iter([b"", bc95("ERROR"), bc95("+CMEE:1", "OK"), bc95("OK")])
    modem = ScriptedModem(lambda _: next(answers))
    with pytest.raises(AtTimeout):
        await modem.engine.command("AT+NSOST=0,1.2.3.4,5,1,00", timeout_s=0.05)
    assert (await modem.engine.command("AT")).lines == ()
    assert modem.sent[1:] == ["AT+CMEE?", "AT+CMEE?", "AT"]


async def test_a_stray_ok_does_not_answer_a_command_that_expects_a_line() -> None:
    modem = ScriptedModem(lambda _: bc95("OK", "+CGSN:866123045678901", "OK"))
    response = await modem.engine.command("AT+CGSN=1", expect="+CGSN")
    assert response.first("+CGSN") == ["866123045678901"]


async def test_commands_are_serialised() -> None:
    modem = ScriptedModem(lambda command: bc95(f"+CSQ:{len(command)},99", "OK"))
    results = await asyncio.gather(*(modem.engine.command("AT+CSQ" + " " * n) for n in range(5)))
    assert [r.lines[0] for r in results] == [f"+CSQ:{6 + n},99" for n in range(5)]


async def test_connection_lost_fails_the_pending_and_the_next_command() -> None:
    modem = ScriptedModem(lambda _: b"")
    with modem.engine.subscribe() as urcs:
        pending = asyncio.ensure_future(modem.engine.command("AT+CSQ", timeout_s=5))
        await asyncio.wait_for(modem.written.wait(), 1)  # the command is out
        modem.engine.connection_lost(OSError(5, "Input/output error"))
        with pytest.raises(ModemGone):
            await asyncio.wait_for(pending, 1)
        with pytest.raises(ModemGone):
            await urcs.get(1)
    with pytest.raises(ModemGone):
        await modem.engine.command("AT")


async def test_a_failing_write_fails_the_command_at_once() -> None:
    def broken_write(data: bytes) -> None:
        engine.connection_lost(OSError(5, "Input/output error"))
        raise ModemGone("port lost while writing")

    engine = AtEngine(broken_write, name="broken")
    with pytest.raises(ModemGone):
        await engine.command("AT", timeout_s=5)
    assert engine.gone


async def test_reboot_during_a_command_raises_modem_restarted() -> None:
    answers = {
        "AT+CSQ": bc95("REBOOT_CAUSE_APPLICATION_AT", "Neul", "OK"),
        "AT+CMEE?": bc95("+CMEE:0", "OK"),
        "AT": bc95("OK"),
    }
    modem = ScriptedModem(answers.__getitem__)
    with modem.engine.subscribe() as urcs:
        with pytest.raises(ModemRestarted):
            await modem.engine.command("AT+CSQ")
        assert (await urcs.get(1)).is_reset
        await modem.engine.command("AT")
    assert modem.sent == ["AT+CSQ", "AT+CMEE?", "AT"]


async def test_multi_line_commands_are_refused() -> None:
    modem = ScriptedModem(lambda _: b"")
    with pytest.raises(ValueError, match="one line"):
        await modem.engine.command("AT\rAT")


@settings(max_examples=60, deadline=None)
@given(reply=st.binary(max_size=300), urc_noise=st.binary(max_size=100))
def test_random_bytes_give_only_typed_errors_never_a_hang(reply: bytes, urc_noise: bytes) -> None:
    async def scenario() -> None:
        modem = ScriptedModem(lambda _: reply)
        with modem.engine.subscribe() as urcs:
            for _ in range(2):
                with contextlib.suppress(DriverError):
                    await modem.engine.command("AT+CSQ", timeout_s=0.01)
                modem.engine.feed(urc_noise)
            while urcs.get_nowait() is not None:
                pass
            modem.engine.connection_lost(None)
            with pytest.raises(ModemGone):
                await modem.engine.command("AT")

    asyncio.run(asyncio.wait_for(scenario(), 2.0))
