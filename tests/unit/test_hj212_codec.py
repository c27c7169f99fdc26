"""HJ 212-2017 frames, CP data, messages and the stream reassembler."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DriverError, ProtocolError
from drivers.hj212 import codec, messages
from drivers.hj212.codec import (
    CpData,
    CrcMismatch,
    FieldError,
    Frame,
    FrameError,
    GarbageError,
    LengthMismatch,
    decode_frame,
    encode_frame,
    join_packets,
    parse_cp,
    split_frame,
)
from drivers.hj212.crc import crc16, format_crc
from drivers.hj212.messages import (
    DataAnswer,
    DataUpload,
    ExecutionResult,
    GetRtdInterval,
    GetTime,
    HistoryRequest,
    NotificationAnswer,
    OtherMessage,
    Pollutant,
    RequestAnswer,
    SetRtdInterval,
    SetTime,
    TimeReport,
    parse_message,
)
from drivers.hj212.session import FrameReassembler, Hj212Session

pytestmark = pytest.mark.unit

# HJ 212-2017, section 6.3.3 (通讯包示例): the standard's own example frame, verbatim.
STANDARD_FRAME = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
)
# The ambient-air real-time example with the standard's MN (QN 20160801085000001), as it is
# copied in public HJ 212 parsers (e.g. the hj-t212-parser and NationalStandard212 test
# sources on GitHub): its CRC 4F40 is right but the length field says 0481 for a 482-byte
# data segment. We could not check it against the standard's text itself.
AIR_SEGMENT = (
    b"QN=20160801085000001;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=7;"
    b"CP=&&DataTime=20160801084000;a21005-Rtd=1.1,a21005-Flag=N;a21004-Rtd=112,"
    b"a21004-Flag=N;a21026-Rtd=58,a21026-Flag=N;a21030-Rtd=64,a21030-Flag=N;LA-Rtd=50.1,"
    b"LA-Flag=N;a34004-Rtd=207,a34004-Flag=N;a34002-Rtd=295,a34002-Flag=N;a01001-Rtd=12.6,"
    b"a01001-Flag=N;a01002-Rtd=32,a01002-Flag=N;a01006-Rtd=101.02,a01006-Flag=N;"
    b"a01007-Rtd=2.1,a01007-Flag=N;a01008-Rtd=120,a01008-Flag=N;a34001-Rtd=217,"
    b"a34001-Flag=N;&&"
)
AIR_FRAME_AS_PUBLISHED = b"##0481" + AIR_SEGMENT + b"4f40\r\n"


def wrap(segment: str | bytes, length: int | None = None, crc: str | None = None) -> bytes:
    """A frame around ``segment`` with the right (or the given) length and CRC."""
    data = segment.encode() if isinstance(segment, str) else segment
    n = len(data) if length is None else length
    c = format_crc(crc16(data)) if crc is None else crc
    return b"##%04d%s%s\r\n" % (n, data, c.encode())


# -- the standard's examples ------------------------------------------------------------


def test_standard_example_decodes_field_by_field() -> None:
    frame = decode_frame(STANDARD_FRAME)
    assert frame.qn == "20160801085857223"
    assert frame.qn_time == datetime(2016, 8, 1, 8, 58, 57, 223000)
    assert frame.st == "32"
    assert frame.cn == "1062"
    assert frame.pw == "100000"
    assert frame.mn == "010000A8900016F000169DC0"
    assert frame.flag == 5
    assert frame.version == 1
    assert frame.ack_requested
    assert not frame.is_split
    assert frame.pnum is None
    assert frame.cp.as_dict() == {"RtdInterval": "30"}
    assert parse_message(frame) == SetRtdInterval(30)


def test_standard_example_encodes_back_byte_for_byte() -> None:
    assert encode_frame(decode_frame(STANDARD_FRAME)) == STANDARD_FRAME


def test_air_example_length_field_is_off_by_one_as_published() -> None:
    with pytest.raises(LengthMismatch) as info:
        decode_frame(AIR_FRAME_AS_PUBLISHED)
    assert (info.value.declared, info.value.actual) == (481, 482)
    assert "481" in info.value.reason
    assert "482" in info.value.reason


def test_air_example_with_the_right_length_decodes() -> None:
    frame = decode_frame(b"##0482" + AIR_SEGMENT + b"4f40\r\n")  # lower-case CRC accepted
    assert frame.flag == 7
    assert frame.ack_requested
    assert not frame.is_split  # D set without PNUM/PNO: a whole message
    upload = parse_message(frame)
    assert isinstance(upload, DataUpload)
    assert upload.cn == "2011"
    assert upload.data_time == datetime(2016, 8, 1, 8, 40)
    assert len(upload.pollutants) == 13
    assert upload.pollutants["a21026"].number("Rtd") == 58
    assert upload.pollutants["LA"].number("Rtd") == 50.1
    assert upload.pollutants["a34004"].flag == "N"
    assert upload.pollutants["a01006"].number("Rtd") == 101.02


# -- errors -----------------------------------------------------------------------------


def test_error_tree() -> None:
    assert issubclass(FrameError, ProtocolError)
    assert issubclass(codec.Hj212Error, DriverError)
    assert issubclass(codec.AckTimeout, DriverError)
    for cls in (CrcMismatch, LengthMismatch, FieldError, GarbageError):
        assert issubclass(cls, FrameError)


def test_crc_mismatch_names_both_values() -> None:
    bad = STANDARD_FRAME.replace(b"1C80", b"1C81")
    with pytest.raises(CrcMismatch) as info:
        decode_frame(bad)
    assert (info.value.received, info.value.computed) == ("1C81", "1C80")
    assert "1C81" in info.value.reason
    assert "1C80" in info.value.reason


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"#0101QN=1\r\n", "'##'"),
        (STANDARD_FRAME[:-2], "CR LF"),
        (b"##01a1" + STANDARD_FRAME[6:], "4 decimal digits"),
        (STANDARD_FRAME.replace(b"1C80", b"1G80"), "hexadecimal"),
        (b"##\r\n", "4 decimal digits"),
        (wrap("QN=1;\xff".encode("latin-1")), "non-ASCII"),
    ],
)
def test_malformed_frames(raw: bytes, words: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_frame(raw)
    assert words in info.value.reason


BASE = "QN=20160801085857223;ST=22;CN=2011;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"


@pytest.mark.parametrize(
    ("segment", "field"),
    [
        (BASE.replace("QN=20160801085857223", "QN=20161301085857223") + "CP=&&&&", "QN"),
        (BASE.replace("QN=20160801085857223", "QN=2016") + "CP=&&&&", "QN"),
        (BASE.replace("ST=22", "ST=2A") + "CP=&&&&", "ST"),
        (BASE.replace("CN=2011", "CN=201") + "CP=&&&&", "CN"),
        (BASE.replace("PW=123456", "PW=12 34") + "CP=&&&&", "PW"),
        (BASE.replace("MN=010000A8900016F000169DC0", "MN=" + "A" * 25) + "CP=&&&&", "MN"),
        (BASE.replace("Flag=5", "Flag=300") + "CP=&&&&", "Flag"),
        (BASE.replace("Flag=5", "Flag=x") + "CP=&&&&", "Flag"),
        (BASE.replace("Flag=5", "Flag=7;PNUM=2;PNO=3") + "CP=&&&&", "PNO"),
        (BASE.replace("Flag=5", "Flag=7;PNUM=2") + "CP=&&&&", "PNO"),
        (BASE.replace("Flag=5", "Flag=5;PNUM=2;PNO=1") + "CP=&&&&", "Flag"),
        (BASE.replace("ST=22;", "") + "CP=&&&&", "ST"),
        (BASE.replace("CN=2011;", "") + "CP=&&&&", "CN"),
        (BASE + "Foo=1;CP=&&&&", "Foo"),
        (BASE + "ST=22;CP=&&&&", "ST"),
        (BASE + "Junk;CP=&&&&", "header"),
        (BASE, "CP"),
        (BASE + "CP=&&DataTime=20160801084000", "CP"),
        (BASE + "CP=&&DataTime&&", "CP"),
        (BASE + "CP=&&a34004-Rtd=1=2&&", "CP"),
        (BASE + "CP=&&=1&&", "CP"),
    ],
)
def test_field_errors_name_the_field(segment: str, field: str) -> None:
    with pytest.raises(FieldError) as info:
        decode_frame(wrap(segment))
    assert info.value.field == field
    assert info.value.reason.startswith(f"field {field}: ")


def test_frames_without_qn_or_flag_decode() -> None:
    # HJ/T 212-2005 style: no QN, no Flag
    frame = decode_frame(
        wrap("ST=32;CN=2011;PW=123456;MN=LD130133000015;CP=&&DataTime=20160824003817&&")
    )
    assert frame.qn is None
    assert frame.flag is None
    assert frame.version is None
    assert not frame.ack_requested


# -- CP ---------------------------------------------------------------------------------


def test_cp_structure() -> None:
    cp = parse_cp("DataTime=20160801084000;a21026-Rtd=58,a21026-Flag=N;LA-Rtd=50.1")
    assert cp.items == (
        (("DataTime", "20160801084000"),),
        (("a21026-Rtd", "58"), ("a21026-Flag", "N")),
        (("LA-Rtd", "50.1"),),
    )
    assert cp.pollutants() == {"a21026": {"Rtd": "58", "Flag": "N"}, "LA": {"Rtd": "50.1"}}
    assert cp.plain() == {"DataTime": "20160801084000"}
    assert cp.encode() == "DataTime=20160801084000;a21026-Rtd=58,a21026-Flag=N;LA-Rtd=50.1"


def test_encode_refuses_a_non_ascii_cp_value_naming_it() -> None:
    # frames are ASCII: encoding must refuse the value, not die in str.encode("ascii")
    frame = Frame(cn="2011", mn="M1", cp=CpData.of({"a34004-Rtd": "温度"}))
    for build in (encode_frame, split_frame, Frame.segment):
        with pytest.raises(FieldError) as info:
            build(frame)
        assert info.value.field == "CP"
        assert "a34004-Rtd" in info.value.why
        assert "'温'" in info.value.why
    with pytest.raises(FieldError, match="non-ASCII"):
        parse_cp("a34004-Rtd=温度")


def test_cp_duplicate_key_is_an_error() -> None:
    with pytest.raises(FieldError):
        parse_cp("a=1;a=2").as_dict()
    with pytest.raises(FieldError):
        parse_cp("x-Rtd=1;x-Rtd=2").pollutants()


def test_data_flags_are_the_standards() -> None:
    assert set(codec.DATA_FLAGS) == set("NFMSDCTB")


# -- messages ---------------------------------------------------------------------------

T = datetime(2016, 8, 1, 8, 58, 57)
MESSAGES = [
    DataUpload("2011", T, {"a34004": Pollutant("a34004", {"Rtd": "35.2", "Flag": "N"})}),
    DataUpload(
        "2051",
        T,
        {"a34004": Pollutant("a34004", {"Avg": "1", "Min": "0", "Max": "2", "Flag": "N"})},
    ),
    DataUpload("2061", T, {"LA": Pollutant("LA", {"Avg": "50.1", "Flag": "M"})}),
    DataUpload("2031", T, {}),
    HistoryRequest("2051", T, datetime(2016, 8, 1, 9)),
    RequestAnswer(1),
    ExecutionResult(100),
    NotificationAnswer(),
    DataAnswer(),
    GetTime(),
    GetTime("a34004"),
    TimeReport(T),
    TimeReport(T, "a34004"),
    SetTime(T),
    GetRtdInterval(),
    GetRtdInterval(30),
    SetRtdInterval(60),
    OtherMessage("3020", CpData.of({"PolId": "a34004"})),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_messages_round_trip(message: messages.Message) -> None:
    frame = Frame(cn=message.cn, qn="20160801085857223", cp=message.cp())
    assert parse_message(decode_frame(encode_frame(frame))) == message


def test_answer_meanings() -> None:
    assert RequestAnswer(3).meaning == "PW error"
    assert not RequestAnswer(3).ok
    assert ExecutionResult(1).ok
    assert ExecutionResult(100).meaning == "no data"


@pytest.mark.parametrize(
    ("cn", "cp", "field"),
    [
        ("2011", "a34004-Rtd=1", "DataTime"),
        ("2011", "DataTime=2016", "DataTime"),
        ("2051", "BeginTime=20160801000000", "EndTime"),
        ("9011", "", "QnRtn"),
        ("9012", "ExeRtn=x", "ExeRtn"),
        ("1012", "", "SystemTime"),
    ],
)
def test_message_field_errors(cn: str, cp: str, field: str) -> None:
    with pytest.raises(FieldError) as info:
        parse_message(Frame(cn=cn, cp=parse_cp(cp)))
    assert info.value.field == field


def test_pollutant_number_errors() -> None:
    p = Pollutant("a34004", {"Rtd": "abc", "Avg": "nan"})
    with pytest.raises(FieldError):
        p.number("Rtd")
    with pytest.raises(FieldError):
        p.number("Avg")
    assert p.number("Max") is None


# -- split packets ----------------------------------------------------------------------


def test_split_and_join() -> None:
    values = {
        f"a{n:05d}": Pollutant(f"a{n:05d}", {"Rtd": f"{n}.5", "Flag": "N"}) for n in range(60)
    }
    message = DataUpload("2011", T, values)
    frame = Frame(cn="2011", qn="20160801085857223", flag=5, cp=message.cp())
    packets = split_frame(frame, max_segment=300)
    assert len(packets) > 3
    for number, packet in enumerate(packets, start=1):
        assert packet.pnum == len(packets)
        assert packet.pno == number
        assert packet.is_split
        assert len(packet.segment()) <= 300
        assert decode_frame(encode_frame(packet)) == packet
    joined = join_packets(packets)
    assert joined == frame
    small = Frame(cn="2011", cp=CpData.of({"a": "1"}))
    assert split_frame(small) == [small]


def test_split_refuses_an_item_that_cannot_fit() -> None:
    frame = Frame(cn="2011", cp=CpData.of({"k": "x" * 250}))
    with pytest.raises(FieldError):
        split_frame(frame, max_segment=100)


# -- properties -------------------------------------------------------------------------

_text = st.text(alphabet="ABCDEFabcdef0123456789", min_size=1)
_keys = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,7}(-[A-Za-z]{1,6})?", fullmatch=True)
_values = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters=";,=&"),
    max_size=12,
)
_items = st.lists(
    st.lists(st.tuples(_keys, _values), min_size=1, max_size=4).map(tuple), max_size=6
).map(lambda items: CpData(tuple(items)))


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    qn = draw(
        st.none()
        | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
            codec.format_qn
        )
    )
    flag = draw(st.none() | st.integers(0, 255))
    pnum = pno = None
    if flag is not None and flag & 2 and draw(st.booleans()):
        pnum = draw(st.integers(1, 9999))
        pno = draw(st.integers(1, pnum))
    return Frame(
        qn=qn,
        st=draw(st.from_regex(r"[0-9]{2}", fullmatch=True)),
        cn=draw(st.from_regex(r"[0-9]{4}", fullmatch=True)),
        pw=draw(st.text(alphabet="abcXYZ0123456789", min_size=1, max_size=32)),
        mn=draw(st.text(alphabet="ABCDEF0123456789", min_size=1, max_size=24)),
        flag=flag,
        pnum=pnum,
        pno=pno,
        cp=draw(_items),
    )


@given(frames())
@settings(max_examples=200, deadline=None)
def test_frames_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@given(_items)
def test_cp_round_trips(cp: CpData) -> None:
    assert parse_cp(cp.encode()) == cp


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_frame_errors(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(data)


@given(st.binary(max_size=120))
def test_random_bytes_after_a_valid_header_raise_only_frame_errors(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(b"##0101" + data + b"\r\n")


@given(st.integers(0, len(STANDARD_FRAME) - 1))
def test_truncated_frames_raise_frame_errors(cut: int) -> None:
    with pytest.raises(FrameError):
        decode_frame(STANDARD_FRAME[:cut])


@given(st.lists(st.binary(max_size=80), max_size=20))
@settings(max_examples=200, deadline=None)
def test_reassembler_survives_random_chunks(chunks: list[bytes]) -> None:
    reassembler = FrameReassembler()
    for chunk in chunks:
        for item in reassembler.feed(chunk):
            assert isinstance(item, Frame | FrameError)
    assert reassembler.pending <= codec.MAX_SEGMENT + 10_011


_garbage = st.binary(max_size=30).map(lambda b: b.replace(b"#", b""))


@given(st.lists(st.tuples(_garbage, frames()), min_size=1, max_size=5), st.data())
@settings(max_examples=100, deadline=None)
def test_reassembler_recovers_every_frame_between_garbage(
    pieces: list[tuple[bytes, Frame]], data: st.DataObject
) -> None:
    stream = b"".join(garbage + encode_frame(frame) for garbage, frame in pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    reassembler = FrameReassembler()
    out: list[Frame | FrameError] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += reassembler.feed(stream[previous:cut])
        previous = cut
    got = [item for item in out if isinstance(item, Frame)]
    assert got == [frame for _, frame in pieces]
    assert all(isinstance(item, GarbageError) for item in out if not isinstance(item, Frame))


def test_reassembler_reports_each_fault_and_resyncs() -> None:
    good = STANDARD_FRAME
    bad_crc = good.replace(b"1C80", b"0000")
    bad_len = b"##0100" + good[6:]
    stream = b"noise" + bad_crc + b"##12" + good + bad_len + good
    out = FrameReassembler().feed(stream)
    kinds = [type(item).__name__ for item in out]
    assert kinds == [
        "GarbageError",
        "CrcMismatch",
        "GarbageError",
        "Frame",
        "LengthMismatch",
        "Frame",
    ]


def test_reassembler_gives_up_on_a_frame_without_end() -> None:
    reassembler = FrameReassembler()
    out = reassembler.feed(b"##9999" + b"x" * 10_020)
    assert any(isinstance(item, FrameError) for item in out)
    assert reassembler.pending < 100


# -- the session over an in-memory link -------------------------------------------------


class MemoryLink:
    """One end of an in-memory byte pipe."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: MemoryLink | None = None

    async def read(self) -> bytes:
        return await self.inbox.get()

    async def write(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.inbox.put_nowait(data)

    async def aclose(self) -> None:
        self.inbox.put_nowait(b"")


def sessions(**b_options: Any) -> tuple[Hj212Session, Hj212Session, list[Frame]]:
    a, b = MemoryLink("a"), MemoryLink("b")
    a.peer, b.peer = b, a
    got: list[Frame] = []
    left = Hj212Session(a, timeout_s=0.05, retries=2)
    right = Hj212Session(b, timeout_s=0.05, retries=2, handler=got.append, **b_options)
    return left, right, got


UPLOAD = Frame(
    cn="2011",
    mn="M1",
    flag=5,
    cp=DataUpload("2011", T, {"a34004": Pollutant("a34004", {"Rtd": "1.0"})}).cp(),
)


async def test_session_send_waits_for_the_answer() -> None:
    left, right, got = sessions()
    async with left, right:
        await left.send(UPLOAD)
        assert [f.cn for f in got] == ["2011"]
        assert [f.cn for f in left.received] == ["9014"]
        assert left.received[0].qn == got[0].qn


async def test_session_send_retries_then_times_out() -> None:
    left, right, got = sessions(auto_ack=False)
    async with left, right:
        with pytest.raises(codec.AckTimeout):
            await left.send(UPLOAD)
        await right.wait_for(lambda: len(got) == 3, 1)
        assert len({f.qn for f in got}) == 1


async def test_session_joins_split_packets() -> None:
    left, right, got = sessions()
    big = DataUpload(
        "2011", T, {f"a{n:05d}": Pollutant(f"a{n:05d}", {"Rtd": str(n)}) for n in range(40)}
    )
    async with left, right:
        left.max_segment = 200
        await left.send(replace(UPLOAD, cp=big.cp()))
        assert len(got) == 1
        assert parse_message(got[0]) == big
        assert len([f for f in left.sent if f.pnum is not None]) > 2


async def test_session_request_exchange() -> None:
    left, right, _ = sessions()

    async def answer(frame: Frame) -> None:
        await right.answer(frame, "9011", CpData.of({"QnRtn": "1"}))
        await right.write_frame(replace(frame, flag=4, cp=TimeReport(T).cp()))
        await right.answer(frame, "9012", CpData.of({"ExeRtn": "1"}))

    right.handler = answer
    async with left, right:
        data = await left.request(Frame(cn="1011", mn="M1"))
        assert [parse_message(f) for f in data] == [TimeReport(T)]


async def test_session_request_refused() -> None:
    left, right, _ = sessions()

    async def refuse(frame: Frame) -> None:
        await right.answer(frame, "9011", CpData.of({"QnRtn": "2"}))

    right.handler = refuse
    async with left, right:
        with pytest.raises(codec.CommandRefused) as info:
            await left.request(Frame(cn="1011", mn="M1"))
        assert (info.value.code, info.value.meaning) == (2, "request refused")


async def test_session_survives_random_bytes() -> None:
    rng = random.Random(7)
    left, right, got = sessions()
    async with left, right:
        for _ in range(30):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
            await left.write_raw(junk)
        await left.write_raw(b"\r\n")  # end any '##...' the junk may have started
        await left.send(UPLOAD)
        assert [f.cn for f in got] == ["2011"]
        assert right.error_count > 0
        assert all(isinstance(e, FrameError) for e in right.errors)


# -- settings ---------------------------------------------------------------------------


def test_settings() -> None:
    from pydantic import ValidationError  # noqa: PLC0415 - only this test needs it

    from drivers.hj212 import Hj212SerialSettings, Hj212TcpSettings  # noqa: PLC0415

    assert Hj212SerialSettings(port="/dev/ttyUSB0").endpoint == "hj212-serial:///dev/ttyUSB0@9600"
    assert Hj212TcpSettings(listen_port=9212).listening
    assert Hj212TcpSettings(host="10.0.0.5", port=9212).endpoint == "hj212-tcp://10.0.0.5:9212"
    for bad in (
        {},
        {"listen_port": 1, "host": "x", "port": 2},
        {"host": "x"},
        {"listen_port": 1, "mn": "bad mn"},
        {"listen_port": 1, "extra": 1},
    ):
        with pytest.raises(ValidationError):
            Hj212TcpSettings(**bad)
    with pytest.raises(ValidationError):
        Hj212SerialSettings(port="/dev/ttyS0", baudrate=12345)
