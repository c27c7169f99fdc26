"""Asking an NB-IoT modem what a technician needs to know, and a CoAP ping through it.

:func:`read_report` sends the queries below through an open :class:`~drivers.nbiot.NbIotModem`
and decodes the answers with :mod:`drivers.nbiot.modem_report`; :func:`coap_ping` sends an
empty confirmable CoAP message (RFC 7252 "CoAP ping") through the modem's UDP socket and waits
for the RST (or ACK) that any CoAP endpoint answers, the hub's ingress included (it needs no
credential).

==========================  ==========================================  ================
command                     for                                         when refused
==========================  ==========================================  ================
``AT+NCCID`` (``AT+CCID``)  ICCID; ``+CME ERROR: 10`` means no SIM       SIM state
``ATI``                     model and firmware revision                 not known
``AT+NBAND?``               bands                                       not known
``AT+CSQ``                  signal (dBm)                                ProtocolError
``AT+NUESTATS``             RSRP, SNR, ECL, cell                        not known
``AT+CEREG?``               registration state                          ProtocolError
``AT+CGATT?``               attached for data                           ProtocolError
``AT+CEREG=4`` + ``?``      the network-granted PSM timers              requested ones
``AT+CPSMS?``               PSM mode and the requested timers           not known
==========================  ==========================================  ================

``AT+CEREG`` is put back to ``1`` (what :class:`~drivers.nbiot.NbIotModem` sets) afterwards.
Errors: the modem's own (:class:`~drivers.nbiot.ModemGone`, :class:`~drivers.nbiot.AtTimeout`)
and :class:`~drivers.errors.ProtocolError` for an answer to a required query that cannot be
read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import aiocoap
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from device_profiles.wire import ModemPsm
from drivers.errors import DriverError, ProtocolError
from drivers.nbiot.at_engine import AtCommandError
from drivers.nbiot.at_parsing import AtResponse
from drivers.nbiot.modem import NbIotModem, parse_cereg, parse_csq
from drivers.nbiot.modem_report import (
    SIM_ERRORS,
    ModemReport,
    RadioStats,
    RoundTrip,
    SimState,
    parse_cereg_timers,
    parse_cpsms,
    parse_firmware,
    parse_nband,
    parse_nuestats,
)

__all__ = ["coap_ping", "ping_datagram", "read_report"]

Progress = Callable[[str], None]


def _quiet(step: str) -> None:
    """The default progress callback: says nothing."""


async def _optional(modem: NbIotModem, command: str) -> AtResponse | None:
    """The answer, or None if the modem refuses the command or answers what cannot be read."""
    try:
        return await modem.command(command)
    except (AtCommandError, ProtocolError):
        return None


async def _sim(modem: NbIotModem) -> tuple[SimState, str | None, int | None]:
    for command, prefix in (("AT+NCCID", "+NCCID"), ("AT+CCID", "+CCID")):
        try:
            answer = await modem.command(command)
        except AtCommandError as exc:
            if exc.cme_code in SIM_ERRORS:
                return ("missing" if exc.cme_code == 10 else "error"), None, exc.cme_code
            continue  # not this modem's command: try the next one
        fields = answer.first(prefix)
        if fields and fields[0]:
            return "ready", fields[0], None
        return "missing", None, None  # OK without an ICCID: the modem sees no SIM
    return "unknown", None, None


async def _psm(modem: NbIotModem) -> tuple[int | None, int | None] | None:
    """The network-granted (TAU, active time) from ``AT+CEREG=4``, if the modem tells them."""
    try:
        await modem.command("AT+CEREG=4")
    except AtCommandError:
        return None
    try:
        answer = await modem.command("AT+CEREG?", expect="+CEREG")
        rows = [row for row in answer.info("+CEREG") if len(row) >= 2]
        return parse_cereg_timers(rows[0]) if rows else None
    finally:
        with contextlib.suppress(AtCommandError):
            await modem.command("AT+CEREG=1")


async def read_report(modem: NbIotModem, progress: Progress = _quiet) -> ModemReport:
    """Everything :mod:`drivers.nbiot.modem_report` decodes, asked now (the port is opened
    first if need be). ``progress`` is told each step: ``identity``, ``signal``, ``network``,
    ``psm``."""
    progress("identity")
    await modem.connect()
    sim, iccid, sim_error = await _sim(modem)
    ati = await _optional(modem, "ATI")
    model, firmware = parse_firmware(list(ati.lines)) if ati is not None else (None, None)
    nband = await _optional(modem, "AT+NBAND?")
    bands = tuple(parse_nband(list(nband.lines))) if nband is not None else ()

    progress("signal")
    csq, ber = parse_csq(await modem.command("AT+CSQ", expect="+CSQ"))
    stats = await _optional(modem, "AT+NUESTATS")
    try:
        radio = parse_nuestats(list(stats.lines)) if stats is not None else RadioStats()
    except ProtocolError:
        radio = RadioStats()

    progress("network")
    stat = parse_cereg(await modem.command("AT+CEREG?", expect="+CEREG"))
    attach = (await modem.command("AT+CGATT?", expect="+CGATT")).first("+CGATT")
    if len(attach) != 1 or attach[0] not in ("0", "1"):
        raise ProtocolError(f"AT+CGATT?: unexpected answer {attach}")

    progress("psm")
    cpsms = await _optional(modem, "AT+CPSMS?")
    psm = parse_cpsms(list(cpsms.lines)) if cpsms is not None else None
    granted = await _psm(modem) if stat in (1, 5) else None
    if granted is not None and (psm is None or psm.enabled):
        tau, active = granted
        psm = ModemPsm(enabled=True, periodic_tau_s=tau, active_time_s=active, source="network")
    return ModemReport(
        imei=modem.imei,
        checked_at=time.time_ns() // 1_000_000,
        sim=sim,
        iccid=iccid,
        sim_error=sim_error,
        csq=csq,
        ber=ber,
        stat=stat,
        attached=attach[0] == "1",
        model=model,
        firmware=firmware,
        bands=bands,
        radio=radio,
        psm=psm,
    )


def ping_datagram(mid: int) -> bytes:
    """An empty confirmable CoAP message (a CoAP ping) with message id ``mid``."""
    message = aiocoap.Message(code=Code.EMPTY)
    message.mtype = Type.CON
    message.mid = mid
    encoded: bytes = message.encode()
    return encoded


def _answer(data: bytes, mid: int) -> str | None:
    """``RST`` or ``ACK`` if ``data`` answers the ping ``mid``."""
    try:
        message = aiocoap.Message.decode(data)
    except (UnparsableMessage, ValueError, IndexError):
        return None
    if message.mid != mid or message.mtype not in (Type.RST, Type.ACK):
        return None
    return "RST" if message.mtype == Type.RST else "ACK"


async def coap_ping(
    modem: NbIotModem,
    host: str,
    port: int,
    *,
    ack_timeout_s: float = 2.0,
    attempts: int = 3,
) -> RoundTrip:
    """A CoAP ping to ``host`` (IPv4) : ``port`` through the modem, sent again (waiting twice
    as long each time) up to ``attempts`` times; the latency is from the ``AT+NSOST`` of the
    answered attempt to the answer (the modem's AT time included). A modem or network error
    gives an unreached :class:`RoundTrip` with the reason, never an exception (but
    cancellation)."""
    loop = asyncio.get_running_loop()
    mid = random.randrange(0x10000)  # noqa: S311 - a message id needs no secrecy
    data = ping_datagram(mid)
    tries = 0
    try:
        async with await modem.open_udp(0) as sock:
            wait = ack_timeout_s
            for _ in range(attempts):
                tries += 1
                sent_at = loop.time()
                await sock.send(host, port, data)
                deadline = sent_at + wait
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        peer, peer_port, reply = await sock.receive(remaining)
                    except TimeoutError:
                        break
                    answer = _answer(reply, mid) if (peer, peer_port) == (host, port) else None
                    if answer is not None:
                        latency = (loop.time() - sent_at) * 1000
                        return RoundTrip(host, port, True, round(latency, 1), answer, tries)
                wait *= 2
    except DriverError as exc:
        return RoundTrip(host, port, False, attempts=tries, error=str(exc))
    total = ack_timeout_s * (2**attempts - 1)
    return RoundTrip(
        host, port, False, attempts=tries, error=f"no answer in {total:.3g} s, {tries} tries"
    )
