"""AT command engine: one reader per serial port, one command in flight, URCs fanned out.

The engine splits what the modem sends into lines and sorts each line into

* the **echo** of the command in flight (``ATE1``): dropped;
* a **final result code** that ends the command in flight: ``OK``, ``ERROR``,
  ``+CME ERROR: <n>`` (with or without the space; BC95 omits it);
* an **information response** of the command in flight: a line starting with the command's own
  prefix (``+CSQ:31,99`` for ``AT+CSQ``) or a line without a ``+`` prefix (``0,2`` for
  ``AT+NSOST``, the data line of ``AT+NSORF``);
* an **unsolicited result code** (URC): every other line (``+NSONMI:0,12``, ``+CEREG:1``,
  ``+NPSMR:1``, ``REBOOT_CAUSE_...``), handed to every :meth:`AtEngine.subscribe` subscriber,
  also while a command is in flight.

Commands are serialised (one in flight, each with its own timeout). After a timeout or a
modem reboot the answer of the old command (or the ``OK`` ending the boot banner) may still
arrive during the next one, so the next command is preceded by a resynchronisation: a command
that must answer an information line before its ``OK`` (``AT+CMEE?``), which a stray ``OK``
cannot complete.

The engine does no I/O itself: bytes go in through :meth:`AtEngine.feed`, commands go out
through the ``write`` callable it was built with, and :meth:`AtEngine.connection_lost` tells it
the port is gone. :class:`SerialAtPort` binds an engine to a serial device: the port's fd in
non-blocking mode with ``loop.add_reader`` (no threads), so there is exactly one reader per port.

The pieces: :mod:`drivers.nbiot.at_parsing` (lines, result codes, fields, URCs, responses),
:mod:`drivers.nbiot.at_engine` (:class:`AtEngine` and the errors),
:mod:`drivers.nbiot.subscription` (:class:`Subscription`), :mod:`drivers.nbiot.at_serial`
(:class:`SerialAtPort`); this module gathers their public names.

Errors (all :class:`~drivers.errors.DriverError`): :class:`AtTimeout`, :class:`AtCommandError`,
:class:`ModemGone`, :class:`ModemRestarted` (the tree: :mod:`drivers.nbiot.at_engine`), and
:class:`~drivers.errors.ProtocolError` for an answer that cannot be parsed (raised by the
callers' parsers).
"""

from drivers.nbiot.at_engine import AtCommandError, AtEngine, AtTimeout, ModemGone, ModemRestarted
from drivers.nbiot.at_parsing import (
    MAX_LINE,
    RESET_MARKERS,
    UNSOLICITED_PLAIN,
    AtResponse,
    FinalResult,
    LineSplitter,
    Urc,
    command_prefix,
    line_prefix,
    parse_final,
    parse_urc,
    split_fields,
    strip_prefix,
)
from drivers.nbiot.at_serial import SerialAtPort
from drivers.nbiot.subscription import Subscription, fresh

__all__ = [
    "MAX_LINE",
    "RESET_MARKERS",
    "UNSOLICITED_PLAIN",
    "AtCommandError",
    "AtEngine",
    "AtResponse",
    "AtTimeout",
    "FinalResult",
    "LineSplitter",
    "ModemGone",
    "ModemRestarted",
    "SerialAtPort",
    "Subscription",
    "Urc",
    "command_prefix",
    "fresh",
    "line_prefix",
    "parse_final",
    "parse_urc",
    "split_fields",
    "strip_prefix",
]
