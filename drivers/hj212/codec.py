"""HJ 212-2017 frames: encode, decode, and the errors of the protocol.

A frame (通讯包) is::

    ##  dddd  <data segment>  XXXX  \\r\\n
        |                      +-- CRC of the data segment (Appendix A), 4 hex digits
        +-- length of the data segment in bytes, 4 decimal digits

and the data segment is ``QN=...;ST=..;CN=....;PW=...;MN=...;Flag=.;[PNUM=..;PNO=..;]CP=&&...&&``.

* ``QN`` request number, ``yyyyMMddHHmmssZZZ`` (milliseconds); it ties answers to requests.
* ``ST`` system code (22 ambient air, 27 noise, 31 surface water, 32 exhaust gas, 91 system
  interaction...), ``CN`` command code, ``PW`` password, ``MN`` device (monitoring point) id.
* ``Flag``: bit 0 ``A`` = answer requested, bit 1 ``D`` = split packet (``PNUM`` packets in all,
  this is number ``PNO``, from 1), bits 2-7 the protocol version (1 = HJ 212-2017, 0 = 2005).
* ``CP=&&...&&``: items separated by ``;``, sub-values of one item by ``,``, each ``key=value``;
  pollutant values are ``code-Field=value`` (``a21026-Rtd=58,a21026-Flag=N``).

Errors (all :class:`~drivers.errors.DriverError`)::

    Hj212Error                      base of everything HJ 212
    ├── FrameError (ProtocolError)  a frame (or a stream) cannot be decoded; ``.reason``
    │   ├── GarbageError            bytes outside any frame were skipped
    │   ├── LengthMismatch          declared vs actual data segment length
    │   ├── CrcMismatch             received vs computed CRC
    │   └── FieldError              one field of the data segment is invalid (``.field``)
    ├── AckTimeout (DriverTimeout)  no 9014 / 9011 / 9012 answer after the retries
    └── CommandRefused (ProtocolError)  QnRtn or ExeRtn other than 1 (``.code``, ``.cn``)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from drivers.errors import DriverError, DriverTimeout, ProtocolError
from drivers.hj212.crc import crc16, format_crc

__all__ = [
    "DATA_FLAGS",
    "FLAG_ACK",
    "FLAG_SPLIT",
    "MAX_SEGMENT",
    "VERSION_2017",
    "AckTimeout",
    "CommandRefused",
    "CpData",
    "CrcMismatch",
    "FieldError",
    "Frame",
    "FrameError",
    "GarbageError",
    "Hj212Error",
    "LengthMismatch",
    "decode_frame",
    "encode_frame",
    "format_qn",
    "format_time",
    "join_packets",
    "parse_cp",
    "parse_qn",
    "parse_time",
    "split_frame",
]

#: Flag bit 0: the receiver must answer (9014 for uploads, 9011 for requests).
FLAG_ACK = 0x01
#: Flag bit 1: this frame is one packet of a split message (PNUM / PNO present).
FLAG_SPLIT = 0x02
#: Protocol version 1 (HJ 212-2017) in bits 2-7.
VERSION_2017 = 1
#: Largest data segment the standard allows in one frame (bytes); longer messages are split.
MAX_SEGMENT = 1024
#: Data flags (数据标记) of the standard and their meanings.
DATA_FLAGS: dict[str, str] = {
    "N": "normal (instrument working normally)",
    "F": "instrument stopped",
    "M": "maintenance",
    "S": "manually entered set value",
    "D": "instrument fault",
    "C": "calibration",
    "T": "above the upper limit of measurement",
    "B": "communication failure",
}


class Hj212Error(DriverError):
    """Base of every HJ 212 error."""


class FrameError(Hj212Error, ProtocolError):
    """A frame or a byte stream cannot be decoded. ``reason`` says precisely why."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(reason)


class GarbageError(FrameError):
    """Bytes that belong to no frame were skipped (``count`` of them)."""

    def __init__(self, count: int, raw: bytes = b"") -> None:
        self.count = count
        super().__init__(f"skipped {count} byte(s) outside any frame", raw)


class LengthMismatch(FrameError):
    """The length field disagrees with the data segment actually received."""

    def __init__(self, declared: int, actual: int, raw: bytes = b"") -> None:
        self.declared = declared
        self.actual = actual
        super().__init__(
            f"length mismatch: header declares {declared} bytes, data segment has {actual}", raw
        )


class CrcMismatch(FrameError):
    """The frame's CRC is not the CRC of its data segment."""

    def __init__(self, received: str, computed: str, raw: bytes = b"") -> None:
        self.received = received
        self.computed = computed
        super().__init__(
            f"CRC mismatch: frame carries {received}, data segment computes to {computed}", raw
        )


class FieldError(FrameError):
    """One field of the data segment is missing or invalid (``field`` names it)."""

    def __init__(self, field_name: str, why: str, raw: bytes = b"") -> None:
        self.field = field_name
        self.why = why
        super().__init__(f"field {field_name}: {why}", raw)


class AckTimeout(Hj212Error, DriverTimeout):
    """The peer did not answer (9014, 9011 or 9012) within the timeout, after the retries."""


class CommandRefused(Hj212Error, ProtocolError):
    """The peer refused a request (QnRtn != 1) or failed to execute it (ExeRtn != 1)."""

    def __init__(self, cn: str, answer: str, code: int, meaning: str) -> None:
        self.cn = cn
        self.answer = answer
        self.code = code
        self.meaning = meaning
        super().__init__(f"CN={cn}: {answer}={code} ({meaning})")


# -- times ------------------------------------------------------------------------------

_QN_FORMAT = "%Y%m%d%H%M%S"


def format_qn(moment: datetime) -> str:
    """``yyyyMMddHHmmssZZZ`` (milliseconds)."""
    return moment.strftime(_QN_FORMAT) + f"{moment.microsecond // 1000:03d}"


def parse_qn(text: str) -> datetime:
    """The moment a QN names; ValueError if it is not ``yyyyMMddHHmmssZZZ``."""
    if not re.fullmatch(r"[0-9]{17}", text):
        raise ValueError(f"{text!r} is not yyyyMMddHHmmssZZZ (17 digits)")
    base = datetime.strptime(text[:14], _QN_FORMAT)
    return base.replace(microsecond=int(text[14:]) * 1000)


def format_time(moment: datetime) -> str:
    """``yyyyMMddHHmmss``, as DataTime, SystemTime, BeginTime and EndTime are written."""
    return moment.strftime(_QN_FORMAT)


def parse_time(text: str) -> datetime:
    """A ``yyyyMMddHHmmss`` time; ValueError otherwise."""
    if not re.fullmatch(r"[0-9]{14}", text):
        raise ValueError(f"{text!r} is not yyyyMMddHHmmss (14 digits)")
    return datetime.strptime(text, _QN_FORMAT)


# -- CP ---------------------------------------------------------------------------------

_CP_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
_CP_VALUE = re.compile(r"[^;,=&\r\n]{0,256}")


@dataclass(frozen=True, slots=True)
class CpData:
    """The command parameters (``CP``): items of ``key=value`` sub-values.

    ``items`` keeps the structure (``;`` between items, ``,`` between sub-values), so a
    decoded CP encodes back to the same text.
    """

    items: tuple[tuple[tuple[str, str], ...], ...] = ()

    @classmethod
    def of(cls, *items: Mapping[str, str]) -> CpData:
        """A CP from one mapping per item: ``CpData.of({"DataTime": t}, {"a34004-Rtd": "12"})``."""
        return cls(tuple(tuple(item.items()) for item in items if item))

    def pairs(self) -> Iterator[tuple[str, str]]:
        for item in self.items:
            yield from item

    def as_dict(self) -> dict[str, str]:
        """Every ``key: value``; FieldError if a key occurs twice."""
        result: dict[str, str] = {}
        for key, value in self.pairs():
            if key in result:
                raise FieldError("CP", f"key {key!r} occurs more than once")
            result[key] = value
        return result

    def pollutants(self) -> dict[str, dict[str, str]]:
        """``{code: {field: value}}`` of the ``code-Field=value`` keys, in order."""
        result: dict[str, dict[str, str]] = {}
        for key, value in self.pairs():
            code, dash, name = key.partition("-")
            if dash:
                fields = result.setdefault(code, {})
                if name in fields:
                    raise FieldError("CP", f"key {key!r} occurs more than once")
                fields[name] = value
        return result

    def plain(self) -> dict[str, str]:
        """The keys without a dash (DataTime, QnRtn, SystemTime, BeginTime...)."""
        return {k: v for k, v in self.as_dict().items() if "-" not in k}

    def encode(self) -> str:
        return ";".join(",".join(f"{k}={v}" for k, v in item) for item in self.items)


def parse_cp(text: str) -> CpData:
    """The CP contents between ``&&`` and ``&&``; FieldError naming the bad part."""
    if text == "":
        return CpData()
    items: list[tuple[tuple[str, str], ...]] = []
    for item_text in text.split(";"):
        if item_text == "":
            continue  # tolerate a trailing ';' (many loggers send ';&&')
        pairs: list[tuple[str, str]] = []
        for pair_text in item_text.split(","):
            key, eq, value = pair_text.partition("=")
            if not eq:
                raise FieldError("CP", f"{pair_text!r} is not key=value")
            _check_pair(key, value)
            pairs.append((key, value))
        items.append(tuple(pairs))
    return CpData(tuple(items))


def _check_pair(key: str, value: str) -> None:
    """FieldError naming the key or value that a frame cannot carry (frames are ASCII)."""
    if not _CP_KEY.fullmatch(key):
        raise FieldError("CP", f"invalid key {key!r}")
    if not value.isascii():
        bad = next(char for char in value if not char.isascii())
        raise FieldError(
            "CP", f"value {value!r} of {key} has the non-ASCII character {bad!r} (frames are ASCII)"
        )
    if not _CP_VALUE.fullmatch(value):
        raise FieldError("CP", f"invalid value {value!r} of {key}")


def _check_cp(cp: CpData) -> None:
    for key, value in cp.pairs():
        _check_pair(key, value)


# -- frames -----------------------------------------------------------------------------

_ST = re.compile(r"[0-9]{2}")
_CN = re.compile(r"[0-9]{4}")
_PW = re.compile(r"[A-Za-z0-9]{1,32}")
_MN = re.compile(r"[A-Za-z0-9]{1,24}")
_HEADER_KEYS = ("QN", "ST", "CN", "PW", "MN", "Flag", "PNUM", "PNO")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame (or a message reassembled from split packets)."""

    cn: str
    st: str = "22"
    pw: str = "123456"
    mn: str = "0"
    qn: str | None = None
    flag: int | None = VERSION_2017 << 2
    cp: CpData = field(default_factory=CpData)
    pnum: int | None = None
    pno: int | None = None

    @property
    def ack_requested(self) -> bool:
        """Flag bit A: the receiver must answer."""
        return self.flag is not None and bool(self.flag & FLAG_ACK)

    @property
    def is_split(self) -> bool:
        """One packet of a split message: Flag bit D set and PNUM/PNO present.

        Some loggers set D (e.g. ``Flag=7``) on frames without PNUM/PNO, as in widely
        copied examples; such a frame is taken as a whole message.
        """
        return self.flag is not None and bool(self.flag & FLAG_SPLIT) and self.pnum is not None

    @property
    def version(self) -> int | None:
        """Protocol version from Flag bits 2-7 (1 = HJ 212-2017)."""
        return None if self.flag is None else self.flag >> 2

    @property
    def qn_time(self) -> datetime | None:
        return None if self.qn is None else parse_qn(self.qn)

    def with_flag(self, *, ack: bool) -> Frame:
        base = self.flag if self.flag is not None else VERSION_2017 << 2
        return replace(self, flag=(base | FLAG_ACK) if ack else (base & ~FLAG_ACK))

    def segment(self) -> str:
        """The data segment text."""
        self.validate()
        parts = []
        if self.qn is not None:
            parts.append(f"QN={self.qn}")
        parts += [f"ST={self.st}", f"CN={self.cn}", f"PW={self.pw}", f"MN={self.mn}"]
        if self.flag is not None:
            parts.append(f"Flag={self.flag}")
        if self.pnum is not None:
            parts += [f"PNUM={self.pnum}", f"PNO={self.pno}"]
        return ";".join(parts) + f";CP=&&{self.cp.encode()}&&"

    def validate(self) -> None:
        """FieldError if a field does not follow the standard."""
        if self.qn is not None:
            try:
                parse_qn(self.qn)
            except ValueError as exc:
                raise FieldError("QN", str(exc)) from exc
        for name, value, pattern, what in (
            ("ST", self.st, _ST, "2 digits"),
            ("CN", self.cn, _CN, "4 digits"),
            ("PW", self.pw, _PW, "1-32 letters or digits"),
            ("MN", self.mn, _MN, "1-24 letters or digits"),
        ):
            if not pattern.fullmatch(value):
                raise FieldError(name, f"{value!r} is not {what}")
        if self.flag is not None and not 0 <= self.flag <= 255:
            raise FieldError("Flag", f"{self.flag} is not 0-255")
        if (self.pnum is None) != (self.pno is None):
            missing = "PNO" if self.pno is None else "PNUM"
            raise FieldError(missing, "PNUM and PNO come together")
        if self.pnum is not None and self.pno is not None:
            if not (self.flag is not None and self.flag & FLAG_SPLIT):
                raise FieldError("Flag", "PNUM/PNO present but Flag lacks the split bit (D)")
            if not 1 <= self.pno <= self.pnum:
                raise FieldError("PNO", f"PNO={self.pno} is not within 1..PNUM={self.pnum}")
        _check_cp(self.cp)


def encode_frame(frame: Frame) -> bytes:
    """``##`` + length + data segment + CRC + CRLF. FieldError if the segment is over 9999."""
    segment = frame.segment().encode("ascii")
    if len(segment) > 9999:
        raise FieldError("CP", f"data segment of {len(segment)} bytes does not fit 4 digits")
    return b"##%04d%s%s\r\n" % (len(segment), segment, format_crc(crc16(segment)).encode())


def split_frame(frame: Frame, max_segment: int = MAX_SEGMENT) -> list[Frame]:
    """The frame itself if it fits ``max_segment``, else packets with PNUM/PNO (split on CP
    items: each packet repeats the header and carries whole items)."""
    if len(frame.segment()) <= max_segment:
        return [frame]
    base = replace(frame, flag=(frame.flag or VERSION_2017 << 2) | FLAG_SPLIT, pnum=9999, pno=9999)
    overhead = len(replace(base, cp=CpData()).segment())
    packets: list[list[tuple[tuple[str, str], ...]]] = [[]]
    size = 0
    for item in frame.cp.items:
        item_len = len(CpData((item,)).encode()) + 1
        if overhead + item_len > max_segment:
            raise FieldError("CP", f"one CP item of {item_len} bytes exceeds {max_segment}")
        if packets[-1] and overhead + size + item_len > max_segment:
            packets.append([])
            size = 0
        packets[-1].append(item)
        size += item_len
    total = len(packets)
    return [
        replace(base, cp=CpData(tuple(items)), pnum=total, pno=number)
        for number, items in enumerate(packets, start=1)
    ]


def decode_frame(raw: bytes | str) -> Frame:
    """Decode one whole frame; FrameError (LengthMismatch, CrcMismatch, FieldError) if invalid."""
    data = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
    if not data.startswith(b"##"):
        raise FrameError(f"frame does not start with '##' (starts with {data[:2]!r})", data)
    if not data.endswith(b"\r\n"):
        raise FrameError("frame does not end with CR LF", data)
    length_text = data[2:6]
    if len(data) < 12 or not length_text.isdigit():
        raise FrameError(f"length field {length_text!r} is not 4 decimal digits", data)
    declared = int(length_text)
    segment = data[6:-6]
    if len(segment) != declared:
        raise LengthMismatch(declared, len(segment), data)
    crc_text = data[-6:-2].decode("latin-1")
    if not re.fullmatch(r"[0-9A-Fa-f]{4}", crc_text):
        raise FrameError(f"CRC field {crc_text!r} is not 4 hexadecimal digits", data)
    computed = format_crc(crc16(segment))
    if crc_text.upper() != computed:
        raise CrcMismatch(crc_text, computed, data)
    try:
        text = segment.decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError(f"data segment has a non-ASCII byte at {exc.start}", data) from exc
    try:
        return _decode_segment(text)
    except FieldError as exc:
        raise FieldError(exc.field, exc.why, data) from None


def _decode_segment(text: str) -> Frame:
    head, sep, rest = text.partition("CP=&&")
    if not sep:
        raise FieldError("CP", "missing 'CP=&&'")
    if not rest.endswith("&&"):
        raise FieldError("CP", "CP does not end with '&&'")
    cp = parse_cp(rest[:-2])
    header: dict[str, str] = {}
    for part in head.split(";"):
        if part == "":
            continue
        key, eq, value = part.partition("=")
        if not eq:
            raise FieldError("header", f"{part!r} is not key=value")
        if key not in _HEADER_KEYS:
            raise FieldError(key, "unknown header field")
        if key in header:
            raise FieldError(key, "occurs twice")
        header[key] = value
    for required in ("ST", "CN", "PW", "MN"):
        if required not in header:
            raise FieldError(required, "missing")
    frame = Frame(
        qn=header.get("QN"),
        st=header["ST"],
        cn=header["CN"],
        pw=header["PW"],
        mn=header["MN"],
        flag=_int_field(header, "Flag"),
        pnum=_int_field(header, "PNUM"),
        pno=_int_field(header, "PNO"),
        cp=cp,
    )
    frame.validate()
    return frame


def _int_field(header: Mapping[str, str], name: str) -> int | None:
    value = header.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,4}", value):
        raise FieldError(name, f"{value!r} is not a decimal number")
    return int(value)


def join_packets(packets: Sequence[Frame]) -> Frame:
    """The message of split packets (in PNO order): their CP items, one header, no D bit."""
    first = packets[0]
    items = tuple(item for packet in packets for item in packet.cp.items)
    flag = None if first.flag is None else first.flag & ~FLAG_SPLIT
    return replace(first, cp=CpData(items), flag=flag, pnum=None, pno=None)
