"""An NB-IoT modem (Quectel BC95/BC28 AT command set) as a UDP datagram transport.

::

    async with NbIotModem(NbIotModemSettings(port="/dev/ttyUSB0")) as modem:
        status = await modem.wait_registered(timeout_s=120)
        async with await modem.open_udp(5683) as sock:
            await sock.send("203.0.113.7", 5683, coap_bytes)
            host, port, data = await sock.receive(timeout_s=30)

Commands used: ``AT``, ``ATE0``, ``AT+CMEE=1``, ``AT+CEREG=1``, ``AT+CGDCONT`` (with an APN),
``AT+CGSN=1``,
``AT+CSQ``, ``AT+CEREG?``, ``AT+CGATT?``, ``AT+NSOCR=DGRAM,17,<port>,1``,
``AT+NSOST=<s>,<ip>,<port>,<len>,<hex>``, ``AT+NSORF=<s>,<len>``, ``AT+NSOCL=<s>``.

Receiving is driven by the ``+NSONMI:<s>,<len>`` URC: the modem's URC task then reads the
socket with ``AT+NSORF`` until the modem has nothing left, joining the parts of a datagram read
in pieces (``<remaining length>`` > 0 means the same datagram goes on), and queues each
datagram on its :class:`UdpSocket`.

The modem going away (USB unplug: end of file or an I/O error on the port) fails the command in
flight at once with :class:`~drivers.nbiot.at.ModemGone`, ends every socket, and publishes
:class:`ModemDisconnected`. The next call reopens the port (the same path; use a stable one) and
publishes :class:`ModemReconnected`, or raises ModemGone while the device is still missing. A
modem reboot (``REBOOT_CAUSE_...``) loses the modem's sockets: they are closed with
:class:`SocketClosed`, :class:`ModemRebooted` is published, and the session is set up again
(echo off, numeric errors); the caller reopens its sockets and re-checks the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Self

import structlog

from drivers.errors import ConfigurationError, ConnectError, DriverError, EncodeError, ProtocolError
from drivers.nbiot.at import (
    AtEngine,
    AtResponse,
    AtTimeout,
    ModemGone,
    SerialAtPort,
    Subscription,
    Urc,
    fresh,
    split_fields,
    strip_prefix,
)
from drivers.nbiot.settings import NbIotModemSettings
from drivers.serial_ports import SerialPortNotFound, resolve_serial_port

__all__ = [
    "Datagram",
    "ModemDisconnected",
    "ModemEvent",
    "ModemRebooted",
    "ModemReconnected",
    "NbIotModem",
    "NetworkStatus",
    "NsorfChunk",
    "PowerSavingChanged",
    "RegistrationChanged",
    "SocketClosed",
    "UdpSocket",
    "parse_cereg",
    "parse_csq",
    "parse_nsorf",
    "rssi_dbm",
]

log = structlog.get_logger(__name__)

_MAX_DRAIN_READS = 256  # NSORF reads per +NSONMI at most (a modem that never says "empty")
_REGISTERED = {1: False, 5: True}  # CEREG stat -> roaming


class SocketClosed(ConnectError):
    """The socket is closed: by :meth:`UdpSocket.close`, or because the modem rebooted."""


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkStatus:
    """The modem's view of the network (AT+CEREG?, AT+CSQ, AT+CGATT?, AT+CGSN=1)."""

    registered: bool
    roaming: bool
    stat: int  # 3GPP TS 27.007 <stat>: 0 not searching, 1 home, 2 searching, 3 denied, 5 roaming
    rssi_dbm: int | None  # None when the modem does not know (CSQ 99)
    csq: int
    ber: int
    attached: bool
    imei: str


class Datagram(NamedTuple):
    """A datagram received from ``host``:``port``."""

    host: str
    port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NsorfChunk:
    """One AT+NSORF answer: ``<socket>,<ip>,<port>,<length>,<hex data>,<remaining length>``."""

    socket: int
    host: str
    port: int
    data: bytes
    remaining: int


class ModemEvent:
    """Base class of what :meth:`NbIotModem.events` reports."""


@dataclass(frozen=True, slots=True)
class ModemRebooted(ModemEvent):
    """The modem restarted (``cause`` e.g. ``REBOOT_CAUSE_APPLICATION_AT``): its sockets are
    gone; reopen them and re-check the network."""

    cause: str


@dataclass(frozen=True, slots=True)
class ModemDisconnected(ModemEvent):
    """The serial port went away (unplugged); the next call tries to reopen it."""

    reason: str


@dataclass(frozen=True, slots=True)
class ModemReconnected(ModemEvent):
    """The port was reopened and the session set up again; sockets must be reopened."""

    port: str


@dataclass(frozen=True, slots=True)
class RegistrationChanged(ModemEvent):
    """A ``+CEREG`` URC (enabled with ``AT+CEREG=1`` at connect): the new registration state."""

    stat: int
    registered: bool


@dataclass(frozen=True, slots=True)
class PowerSavingChanged(ModemEvent):
    """A ``+NPSMR`` URC: the modem entered (True) or left (False) power saving mode."""

    active: bool


# -- parsers ------------------------------------------------------------------------------


def rssi_dbm(csq: int) -> int | None:
    """dBm of a ``+CSQ`` ``<rssi>`` (TS 27.007): 0 -> -113 or less, 31 -> -51 or more, 99 ->
    None (unknown)."""
    if csq == 99:
        return None
    if not 0 <= csq <= 31:
        raise ProtocolError(f"+CSQ rssi {csq} is outside 0-31 and not 99")
    return -113 + 2 * csq


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(f"{what}: {value!r} is not an integer") from None


def parse_csq(response: AtResponse) -> tuple[int, int]:
    """``(rssi, ber)`` from an ``AT+CSQ`` answer (``+CSQ:<rssi>,<ber>``)."""
    fields = response.first("+CSQ")
    if len(fields) != 2:
        raise ProtocolError(f"AT+CSQ: unexpected answer {list(response.lines)}")
    rssi, ber = _int(fields[0], "+CSQ rssi"), _int(fields[1], "+CSQ ber")
    rssi_dbm(rssi)  # range check
    return rssi, ber


def parse_cereg(response: AtResponse) -> int:
    """``<stat>`` from an ``AT+CEREG?`` answer (``+CEREG:<n>,<stat>[,...]``)."""
    rows = response.info("+CEREG")
    full = [row for row in rows if len(row) >= 2]
    if full:
        return _int(full[0][1], "+CEREG stat")
    if rows and len(rows[0]) == 1:
        return _int(rows[0][0], "+CEREG stat")
    raise ProtocolError(f"AT+CEREG?: unexpected answer {list(response.lines)}")


def parse_nsorf(line: str) -> NsorfChunk:
    """One ``AT+NSORF`` data line."""
    fields = split_fields(strip_prefix(line, "+NSORF"))
    if len(fields) != 6:
        raise ProtocolError(f"AT+NSORF: expected 6 fields, got {line!r}")
    socket = _int(fields[0], "+NSORF socket")
    port = _int(fields[2], "+NSORF port")
    length = _int(fields[3], "+NSORF length")
    remaining = _int(fields[5], "+NSORF remaining length")
    try:
        data = bytes.fromhex(fields[4])
    except ValueError:
        raise ProtocolError(f"AT+NSORF: data is not hex: {fields[4][:40]!r}") from None
    if len(data) != length or remaining < 0 or not 0 <= port <= 65535:
        raise ProtocolError(f"AT+NSORF: inconsistent answer {line[:80]!r}")
    return NsorfChunk(socket=socket, host=fields[1], port=port, data=data, remaining=remaining)


# -- the socket ---------------------------------------------------------------------------


class UdpSocket:
    """A UDP socket on the modem (``AT+NSOCR``); created by :meth:`NbIotModem.open_udp`."""

    def __init__(self, modem: NbIotModem, socket_id: int, local_port: int) -> None:
        self.modem = modem
        self.socket_id = socket_id
        self.local_port = local_port
        self._inbox: Subscription[Datagram] = Subscription(maxsize=256)
        self._closed: DriverError | None = None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def send(self, host: str, port: int, data: bytes) -> int:
        """Send one datagram to ``host`` (an IPv4 address) : ``port``; the bytes sent."""
        self._check_open()
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigurationError(
                f"the modem sends to IPv4 addresses only, not {host!r}"
            ) from None
        if not 1 <= port <= 65535:
            raise ConfigurationError(f"UDP port {port} is outside 1-65535")
        limit = self.modem.settings.max_datagram
        if not 1 <= len(data) <= limit:
            raise EncodeError(f"a datagram holds 1-{limit} bytes, not {len(data)}")
        command = f"AT+NSOST={self.socket_id},{address},{port},{len(data)},{data.hex().upper()}"
        response = await self.modem.socket_command(command)
        self._check_open()
        fields = response.first("+NSOST")
        if len(fields) != 2 or _int(fields[0], "NSOST socket") != self.socket_id:
            raise ProtocolError(f"AT+NSOST: unexpected answer {list(response.lines)}")
        sent = _int(fields[1], "NSOST length")
        if sent != len(data):
            raise ProtocolError(f"AT+NSOST: modem took {sent} of {len(data)} bytes")
        return sent

    async def receive(self, timeout_s: float | None = None) -> Datagram:
        """The next datagram (``host, port, data``); TimeoutError after ``timeout_s``;
        :class:`SocketClosed` or ModemGone once the socket is closed or the modem is gone."""
        try:
            return await self._inbox.get(timeout_s)
        except StopAsyncIteration:  # pragma: no cover - the inbox always ends with an error
            raise SocketClosed(f"socket {self.socket_id} closed") from None

    async def close(self) -> None:
        """Close the socket on the modem (``AT+NSOCL``). Idempotent."""
        if self._closed is not None:
            return
        self.invalidate(SocketClosed(f"socket {self.socket_id} closed"))
        self.modem.forget_socket(self)
        with contextlib.suppress(DriverError):
            await self.modem.socket_command(f"AT+NSOCL={self.socket_id}", reconnect=False)

    def deliver(self, datagram: Datagram) -> None:
        """Queue a received datagram (called by the modem's URC task)."""
        self._inbox.publish(datagram)

    def invalidate(self, error: DriverError) -> None:
        """Mark the socket dead with ``error`` (called by the modem; queued datagrams can still
        be received, then ``error`` is raised)."""
        if self._closed is None:
            self._closed = error
            self._inbox.finish(error)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise fresh(self._closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<UdpSocket {self.socket_id} port {self.local_port} {state}>"


# -- the modem ----------------------------------------------------------------------------


class NbIotModem:
    """A BC95/BC28-style modem on a serial port: network status and UDP sockets.

    A reusable, non-reentrant async context manager; calls also (re)connect on demand.
    """

    def __init__(self, settings: NbIotModemSettings) -> None:
        self.settings = settings
        self.imei = ""
        self._port: SerialAtPort | None = None
        self._urc_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._sockets: dict[int, UdpSocket] = {}
        self._event_subs: list[Subscription[ModemEvent]] = []
        self._entered = False
        self._ever_connected = False

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def connected(self) -> bool:
        """True while the port is open (the modem may still turn out gone)."""
        return self._port is not None and not self._port.engine.gone

    def events(self, maxsize: int = 100) -> Subscription[ModemEvent]:
        """A subscription to modem events from now on: reboots, disconnects, reconnects, URCs
        of registration and power saving. Close it when done (``with modem.events() as ev``)."""
        sub: Subscription[ModemEvent] = Subscription(maxsize, on_close=self._forget_events)
        self._event_subs.append(sub)
        return sub

    def _forget_events(self, sub: Subscription[ModemEvent]) -> None:
        with contextlib.suppress(ValueError):
            self._event_subs.remove(sub)

    # -- connection -------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the port and set up the session; ModemGone if the device is missing,
        AtTimeout if it does not answer."""
        await self._engine()

    async def close(self) -> None:
        """Close the sockets (best effort) and the port. Idempotent."""
        for sock in list(self._sockets.values()):
            with contextlib.suppress(DriverError, TimeoutError):
                async with asyncio.timeout(self.settings.command_timeout_s):  # never wait_for
                    await sock.close()
        await self._drop(None)

    async def reconnect(self) -> None:
        """Close the port and open it again (after a re-plug); sockets must be reopened."""
        await self._drop(None)
        await self._engine()

    async def __aenter__(self) -> Self:
        if self._entered:
            raise ConfigurationError(f"{self!r} is already open (not reentrant)")
        await self.connect()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._entered = False
        await self.close()
        subs, self._event_subs = self._event_subs, []
        for sub in subs:
            sub.finish()

    # -- commands ---------------------------------------------------------------------

    async def command(
        self, command: str, *, timeout_s: float | None = None, expect: str | None = None
    ) -> AtResponse:
        """Any AT command (reconnecting first if the port is closed); see AtEngine.command."""
        engine = await self._engine()
        return await engine.command(command, timeout_s=timeout_s, expect=expect)

    async def socket_command(self, command: str, *, reconnect: bool = True) -> AtResponse:
        """A socket command, with the longer socket timeout."""
        if reconnect:
            engine = await self._engine()
        elif self._port is None:
            raise ModemGone(f"{self.endpoint}: not connected")
        else:
            engine = self._port.engine
        return await engine.command(command, timeout_s=self.settings.socket_timeout_s)

    async def network_status(self) -> NetworkStatus:
        """Registration, signal and attach state now."""
        csq, ber = parse_csq(await self.command("AT+CSQ", expect="+CSQ"))
        stat = parse_cereg(await self.command("AT+CEREG?", expect="+CEREG"))
        attach = (await self.command("AT+CGATT?", expect="+CGATT")).first("+CGATT")
        if len(attach) != 1:
            raise ProtocolError(f"AT+CGATT?: unexpected answer {attach}")
        return NetworkStatus(
            registered=stat in _REGISTERED,
            roaming=_REGISTERED.get(stat, False),
            stat=stat,
            rssi_dbm=rssi_dbm(csq),
            csq=csq,
            ber=ber,
            attached=_int(attach[0], "+CGATT state") == 1,
            imei=self.imei,
        )

    async def wait_registered(self, timeout_s: float, poll_s: float = 5.0) -> NetworkStatus:
        """:meth:`network_status` until registered and attached: again at each modem event
        (a ``+CEREG`` URC) and at least every ``poll_s``; TimeoutError after ``timeout_s``."""
        with self.events() as events:
            async with asyncio.timeout(timeout_s):
                while True:
                    status = await self.network_status()
                    if status.registered and status.attached:
                        return status
                    try:
                        await events.get(poll_s)
                    except TimeoutError:
                        pass  # nothing happened: poll again
                    except StopAsyncIteration:
                        raise ModemGone(f"{self.endpoint}: closed while waiting") from None

    async def open_udp(self, local_port: int = 0) -> UdpSocket:
        """A UDP socket listening on ``local_port`` (0: the modem picks one)."""
        if not 0 <= local_port <= 65535:
            raise ConfigurationError(f"UDP port {local_port} is outside 0-65535")
        response = await self.socket_command(f"AT+NSOCR=DGRAM,17,{local_port},1")
        fields = response.first("+NSOCR")
        if len(fields) != 1:
            raise ProtocolError(f"AT+NSOCR: unexpected answer {list(response.lines)}")
        socket_id = _int(fields[0], "NSOCR socket")
        sock = UdpSocket(self, socket_id, local_port)
        old = self._sockets.get(socket_id)
        if old is not None:  # the modem reused an id we thought open: it was lost
            old.invalidate(SocketClosed(f"socket {socket_id} was lost"))
        self._sockets[socket_id] = sock
        log.debug("nbiot socket open", port=self.endpoint, socket=socket_id, local=local_port)
        return sock

    def forget_socket(self, sock: UdpSocket) -> None:
        """Stop routing datagrams to ``sock`` (called by UdpSocket.close)."""
        if self._sockets.get(sock.socket_id) is sock:
            del self._sockets[sock.socket_id]

    # -- internals --------------------------------------------------------------------

    async def _engine(self) -> AtEngine:
        port = self._port
        if port is not None and not port.engine.gone:
            return port.engine
        async with self._connect_lock:
            if self._port is not None and not self._port.engine.gone:
                return self._port.engine
            await self._drop(None)
            return await self._open()

    async def _open(self) -> AtEngine:
        s = self.settings
        try:
            identity = resolve_serial_port(port=s.port, serial_number=s.serial_number)
        except SerialPortNotFound as exc:
            raise ModemGone(f"{self.endpoint}: {exc}") from exc
        port = SerialAtPort(
            identity.device,
            baudrate=s.baudrate,
            default_timeout_s=s.command_timeout_s,
            on_lost=self._on_port_lost,
        )
        engine = port.open()
        urcs = engine.subscribe()
        try:
            await self._setup_session(engine)
        except BaseException:
            urcs.close()
            port.close()
            raise
        self._port = port
        self._urc_task = asyncio.create_task(
            self._urc_loop(engine, urcs), name=f"nbiot urc {identity.label}"
        )
        if self._ever_connected:
            self._publish(ModemReconnected(identity.label))
        self._ever_connected = True
        log.info("nbiot modem connected", port=self.endpoint, imei=self.imei)
        return engine

    async def _setup_session(self, engine: AtEngine, *, probe: bool = True) -> None:
        """Echo off, numeric errors, APN, IMEI. ``probe``: first wake the modem with ``AT``
        (a fresh port); after a reboot the stray ``OK`` of the boot banner may still be on its
        way, so AT+CGSN=1 (which must answer +CGSN before its OK) goes first instead."""
        s = self.settings
        attempts = 3
        for attempt in range(attempts if probe else 0):
            try:
                await engine.command("AT", timeout_s=s.init_timeout_s / attempts)
                break
            except AtTimeout:
                if attempt == attempts - 1:
                    raise
        imei = (await engine.command("AT+CGSN=1", expect="+CGSN")).first("+CGSN")
        if len(imei) != 1 or not imei[0]:
            raise ProtocolError(f"AT+CGSN=1: unexpected answer {imei}")
        self.imei = imei[0]
        await engine.command("ATE0")
        await engine.command("AT+CMEE=1")
        await engine.command("AT+CEREG=1")  # registration changes as +CEREG:<stat> URCs
        if s.apn is not None:
            await engine.command(f'AT+CGDCONT=1,"IP","{s.apn}"')

    async def _drop(self, reason: str | None) -> None:
        port, self._port = self._port, None
        task, self._urc_task = self._urc_task, None
        if port is not None:
            port.close()
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._invalidate_sockets(ModemGone(reason or f"{self.endpoint}: port closed"))

    def _on_port_lost(self, exc: BaseException | None) -> None:
        if exc is None:
            return  # closed by us
        reason = f"{self.endpoint}: {exc}"
        log.error("nbiot modem gone", port=self.endpoint, error=str(exc))
        self._invalidate_sockets(ModemGone(reason))
        self._publish(ModemDisconnected(reason))

    def _invalidate_sockets(self, error: DriverError) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.invalidate(error)

    def _publish(self, event: ModemEvent) -> None:
        for sub in self._event_subs:
            sub.publish(event)

    async def _urc_loop(self, engine: AtEngine, urcs: Subscription[Urc]) -> None:
        with urcs:
            try:
                async for urc in urcs:
                    try:
                        await self._on_urc(engine, urc)
                    except ModemGone:
                        return
                    except DriverError as exc:
                        log.warning("nbiot urc handling failed", urc=urc.line, error=str(exc))
            except ModemGone:
                return

    async def _on_urc(self, engine: AtEngine, urc: Urc) -> None:
        if urc.is_reset:
            log.warning("nbiot modem rebooted", port=self.endpoint, cause=urc.name)
            self._invalidate_sockets(SocketClosed(f"modem rebooted ({urc.name}); reopen"))
            self._publish(ModemRebooted(urc.name))
            await self._setup_session(engine, probe=False)
        elif urc.name == "+NSONMI" and urc.fields:
            socket_id = _int(urc.fields[0], "+NSONMI socket")
            if socket_id in self._sockets:
                await self._drain(engine, socket_id)
        elif urc.name == "+CEREG" and urc.fields:
            # unsolicited: <stat>[,<tac>,<ci>,<AcT>]; two fields are a late read answer <n>,<stat>
            fields = urc.fields
            stat = _int(fields[1] if len(fields) == 2 else fields[0], "+CEREG stat")
            self._publish(RegistrationChanged(stat, stat in _REGISTERED))
        elif urc.name == "+NPSMR" and urc.fields:
            self._publish(PowerSavingChanged(urc.fields[0] == "1"))
        else:
            log.debug("nbiot urc", port=self.endpoint, line=urc.line)

    async def _drain(self, engine: AtEngine, socket_id: int) -> None:
        """Read socket ``socket_id`` with AT+NSORF until the modem has nothing more."""
        size = self.settings.max_datagram
        parts: list[bytes] = []
        for _ in range(_MAX_DRAIN_READS):
            response = await engine.command(
                f"AT+NSORF={socket_id},{size}", timeout_s=self.settings.socket_timeout_s
            )
            if not response.lines:
                break
            chunk = parse_nsorf(response.lines[0])
            if chunk.socket != socket_id:
                raise ProtocolError(f"AT+NSORF={socket_id} answered for socket {chunk.socket}")
            parts.append(chunk.data)
            if chunk.remaining == 0:
                sock = self._sockets.get(socket_id)
                if sock is not None:
                    sock.deliver(Datagram(chunk.host, chunk.port, b"".join(parts)))
                parts = []
        else:
            log.warning("nbiot drain stopped", port=self.endpoint, socket=socket_id)

    def __repr__(self) -> str:
        return f"<NbIotModem {self.endpoint}>"
