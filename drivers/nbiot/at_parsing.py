"""What AT lines say: lines out of bytes, final result codes, prefixes, fields, URCs, responses.

Pure functions and value types, no I/O: the :class:`~drivers.nbiot.at_engine.AtEngine` sorts
lines with them and the modem (:mod:`drivers.nbiot.modem`) reads its answers with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "MAX_LINE",
    "RESET_MARKERS",
    "UNSOLICITED_PLAIN",
    "AtResponse",
    "FinalResult",
    "LineSplitter",
    "Urc",
    "command_prefix",
    "line_prefix",
    "parse_final",
    "parse_urc",
    "split_fields",
    "strip_prefix",
]

#: Longest line kept; an NSORF answer of 512 bytes is ~1,100 characters. Longer runs without a
#: line end are dropped (line noise), so garbage can never grow the buffer without bound.
MAX_LINE = 4096
#: Lines that announce a modem reboot (BC95: ``REBOOT_CAUSE_APPLICATION_AT``, ...).
RESET_MARKERS: tuple[str, ...] = ("REBOOT_",)
#: Lines without a ``+`` that are unsolicited (the BC95 boot banner).
UNSOLICITED_PLAIN: tuple[str, ...] = ("REBOOT_", "Neul", "Boot:", "Security", "Protocol", "Apps")

_CME = re.compile(r"^\+(CME|CMS) ERROR:\s*(.*)$", re.IGNORECASE)
_PREFIX = re.compile(r"^(\+[A-Za-z0-9_]+)")
_COMMAND_PREFIX = re.compile(r"^AT(\+[A-Za-z0-9_]+)", re.IGNORECASE)


class LineSplitter:
    """Bytes in, complete non-empty lines out; CR, LF and CRLF all end a line.

    Bytes are decoded as Latin-1 (every byte is a character, nothing can fail to decode). A run
    longer than ``max_line`` without a line end is discarded and counted in ``overflows``.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.overflows = 0
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[str]:
        """The lines completed by ``data``, stripped of surrounding white space."""
        self._buffer += data
        lines: list[str] = []
        start = 0
        buf = self._buffer
        for index, byte in enumerate(buf):
            if byte in (0x0D, 0x0A):
                if not self._discarding:
                    text = bytes(buf[start:index]).strip().decode("latin-1")
                    if text:
                        lines.append(text)
                self._discarding = False
                start = index + 1
        del buf[:start]
        if len(buf) > self.max_line:
            self.overflows += 1
            self._discarding = True
            buf.clear()
        return lines

    @property
    def pending(self) -> int:
        """Bytes held for a line not yet ended."""
        return len(self._buffer)


@dataclass(frozen=True, slots=True)
class FinalResult:
    """A final result code: ``OK`` (``ok``), ``ERROR`` or ``+CME ERROR: n`` (``cme_code``)."""

    ok: bool
    line: str
    cme_code: int | None = None


def parse_final(line: str) -> FinalResult | None:
    """The final result code in ``line``, or None if the line is not one."""
    text = line.strip()
    upper = text.upper()
    if upper == "OK":
        return FinalResult(ok=True, line=text)
    if upper == "ERROR":
        return FinalResult(ok=False, line=text)
    match = _CME.match(text)
    if match is None:
        return None
    detail = match.group(2).strip()
    return FinalResult(ok=False, line=text, cme_code=int(detail) if detail.isdigit() else None)


def command_prefix(command: str) -> str | None:
    """The response prefix of an extended command: ``AT+CEREG?`` -> ``+CEREG``; None for
    basic commands (``AT``, ``ATE0``, ``ATI``)."""
    match = _COMMAND_PREFIX.match(command.strip())
    return match.group(1).upper() if match else None


def line_prefix(line: str) -> str | None:
    """``+NSONMI`` for ``+NSONMI:0,4``; None for a line without a ``+NAME`` prefix."""
    match = _PREFIX.match(line)
    return match.group(1).upper() if match else None


def strip_prefix(line: str, prefix: str) -> str:
    """The text after ``prefix:`` (``+CSQ: 31,99`` and ``+CSQ:31,99`` both give ``31,99``).

    A line without the prefix is returned unchanged (BC95 answers some commands bare).
    """
    text = line.strip()
    if text.upper().startswith(prefix.upper()):
        text = text[len(prefix) :].lstrip()
        if text.startswith(":"):
            text = text[1:]
    return text.strip()


def split_fields(text: str) -> list[str]:
    """Comma-separated fields, surrounding white space and double quotes removed."""
    if not text:
        return []
    fields: list[str] = []
    for raw in text.split(","):
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        fields.append(value)
    return fields


@dataclass(frozen=True, slots=True)
class Urc:
    """One unsolicited line: ``name`` is its prefix (``+NSONMI``) or, for a bare line, the line
    itself (``REBOOT_CAUSE_APPLICATION_AT``); ``fields`` the values after the colon."""

    line: str
    name: str
    fields: tuple[str, ...]
    received_at: float = field(default=0.0, compare=False)

    @property
    def is_reset(self) -> bool:
        """True for a line announcing a modem reboot."""
        return self.name.startswith(RESET_MARKERS)


def parse_urc(line: str, received_at: float = 0.0) -> Urc:
    """Split an unsolicited line into name and fields."""
    prefix = line_prefix(line)
    if prefix is None:
        return Urc(line=line, name=line.strip(), fields=(), received_at=received_at)
    return Urc(
        line=line,
        name=prefix,
        fields=tuple(split_fields(strip_prefix(line, prefix))),
        received_at=received_at,
    )


@dataclass(frozen=True, slots=True)
class AtResponse:
    """A successful command: its information lines (without echo, URCs and the final OK)."""

    command: str
    lines: tuple[str, ...]

    def info(self, prefix: str) -> list[list[str]]:
        """The fields of the lines carrying ``prefix``; if none does, of every line (BC95
        answers socket commands bare: ``0,12``)."""
        wanted = prefix.upper()
        tagged = [line for line in self.lines if line_prefix(line) == wanted]
        return [split_fields(strip_prefix(line, prefix)) for line in tagged or self.lines]

    def first(self, prefix: str) -> list[str]:
        """The fields of the first line :meth:`info` gives; [] if there is none."""
        rows = self.info(prefix)
        return rows[0] if rows else []
