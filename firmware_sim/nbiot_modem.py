"""A simulated BC95-style NB-IoT modem on a pseudo-terminal that sends real UDP.

The simulator holds the pty master (raw mode, ``loop.add_reader``, no threads); clients open
:attr:`NbIotModemSim.port_path`, a symlink in a temp directory that always points at the
current pty slave, so a client reopens "the same port" after :meth:`~NbIotModemSim.replug`.

It answers ``AT``, ``ATE0/1``, ``ATI``, ``AT+CMEE``, ``AT+CGSN=1``, ``AT+CSQ``, ``AT+CEREG?``,
``AT+CEREG=<n>`` (mode 4 adds the granted PSM timers), ``AT+CGATT?``, ``AT+CGDCONT``,
``AT+NCCID``, ``AT+CIMI``, ``AT+NBAND``, ``AT+NUESTATS``, ``AT+CPSMS``, ``AT+NRB``,
``AT+NSOCR``, ``AT+NSOST``, ``AT+NSORF``, ``AT+NSOCL`` the way a BC95 does (no space after the colon unless
``space_after_colon``; plain ``ERROR`` until ``AT+CMEE=1``, then ``+CME ERROR:<n>``).
``AT+NSOCR`` binds a real UDP socket on ``bind_host``; ``AT+NSOST`` sends a real datagram from
it; datagrams arriving there are announced with ``+NSONMI:<s>,<len>`` and read with
``AT+NSORF`` (``<remaining length>`` counts the bytes of the same datagram still unread).

::

    async with run_nbiot_modem(register_after_polls=2) as sim:
        sim.port_path            # open this with the driver
        sim.sent_datagrams       # what AT+NSOST sent
        sim.faults.no_answer("AT+CSQ")
        sim.unplug(); sim.replug(); sim.reboot()
        sim.remove_sim(); sim.insert_sim()      # no SIM: +CME ERROR:10, not searching
        sim.set_registration(2); sim.set_registration(3)   # searching; denied
        sim.set_signal(3)                        # CSQ 3 (-107 dBm)

What a technician's check reads (``iotctl modem check``): IMEI, ICCID (``AT+NCCID``), model and
firmware (``ATI``), bands, signal (CSQ and ``AT+NUESTATS``, derived from ``csq``),
registration, attach, and the PSM timers: requested (``AT+CPSMS?``) and granted
(``AT+CEREG=4``), as 3GPP 8-bit strings (``psm_tau``, ``psm_active``, ``granted_tau``,
``granted_active``; ``"111xxxxx"`` is deactivated).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import structlog

from firmware_sim.serial_link import PtyLink

__all__ = [
    "CME_INCORRECT_PARAMETERS",
    "CME_OPERATION_NOT_ALLOWED",
    "CME_SIM_NOT_INSERTED",
    "FaultRule",
    "NbIotModemSim",
    "SentDatagram",
    "SimFaults",
    "format_info",
    "format_nsorf",
    "run_nbiot_modem",
]

log = structlog.get_logger(__name__)

CME_OPERATION_NOT_ALLOWED = 3
CME_SIM_NOT_INSERTED = 10
CME_INCORRECT_PARAMETERS = 50
MAX_SOCKETS = 7  # BC95: sockets 0-6
MAX_DATAGRAM = 512
MAX_QUEUED = 64  # datagrams held per socket; later ones are dropped, as a modem's buffer would
_MAX_INPUT = 4096


def format_info(name: str, value: str, *, space: bool = False) -> str:
    """An information line: ``+CSQ:24,99`` (BC95) or ``+CSQ: 24,99`` (``space``)."""
    return f"{name}:{' ' if space else ''}{value}"


def format_nsorf(socket_id: int, host: str, port: int, data: bytes, remaining: int) -> str:
    """The data line of an ``AT+NSORF`` answer."""
    return f"{socket_id},{host},{port},{len(data)},{data.hex().upper()},{remaining}"


@dataclass(frozen=True, slots=True)
class SentDatagram:
    """A datagram the simulated modem sent for ``AT+NSOST``."""

    socket: int
    host: str
    port: int
    data: bytes
    local_port: int


@dataclass(slots=True)
class FaultRule:
    """For the next ``count`` commands starting with ``match`` (case-insensitive): send the
    ``before`` lines first, then ``reply`` instead of the real answer (``None``: the real
    answer; ``[]``: no answer at all); with ``late`` the answer comes only just before the
    answer to the next command (as a slow modem's would). ``count`` -1 applies forever."""

    match: str
    before: list[bytes] = field(default_factory=list)
    reply: list[bytes] | None = None
    count: int = 1
    late: bool = False  # the answer is held back and sent just before the next command's


class SimFaults:
    """Fault injection, rule by rule (first matching rule wins)."""

    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def no_answer(self, command: str, count: int = 1) -> FaultRule:
        """Swallow the command: no echo-independent answer at all."""
        return self.add(FaultRule(command, reply=[], count=count))

    def late_answer(self, command: str, count: int = 1) -> FaultRule:
        """Hold the answer back until the next command arrives, then send it first."""
        return self.add(FaultRule(command, late=True, count=count))

    def garbage(
        self,
        command: str,
        data: bytes = b"\x00\xfe#@!garbage\xff",
        *,
        replace: bool = False,
        count: int = 1,
    ) -> FaultRule:
        """A garbage line before the answer (or instead of it, with ``replace``)."""
        return self.add(
            FaultRule(command, before=[data], reply=[] if replace else None, count=count)
        )

    def error(self, command: str, cme_code: int | None = None, count: int = 1) -> FaultRule:
        """Answer ``ERROR`` (``cme_code`` None) or ``+CME ERROR:<cme_code>``."""
        line = b"ERROR" if cme_code is None else f"+CME ERROR:{cme_code}".encode()
        return self.add(FaultRule(command, reply=[line], count=count))

    def urc_before(self, command: str, line: str, count: int = 1) -> FaultRule:
        """An unsolicited line between the command and its answer."""
        return self.add(FaultRule(command, before=[line.encode("latin-1")], count=count))

    def clear(self) -> None:
        self.rules.clear()

    def take(self, command: str) -> FaultRule | None:
        """The rule that applies to ``command`` now (consuming one use of it)."""
        upper = command.upper()
        for rule in self.rules:
            if upper.startswith(rule.match.upper()):
                if rule.count > 0:
                    rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
                return rule
        return None


class _CommandError(Exception):
    """A command refused with a CME code (internal to the simulator)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(slots=True)
class _SimSocket:
    sock: socket.socket
    local_port: int
    inbox: deque[tuple[str, int, bytearray]] = field(default_factory=deque)


class NbIotModemSim:
    """The simulated modem. Use :func:`run_nbiot_modem`, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        link: PtyLink,
        echo: bool = True,
        imei: str = "866123045678901",
        csq: int = 24,
        ber: int = 99,
        register_after_polls: int = 0,
        roaming: bool = False,
        bind_host: str = "127.0.0.1",
        space_after_colon: bool = False,
        iccid: str = "89860425102180012345",
        sim_inserted: bool = True,
    ) -> None:
        self.link = link
        self.default_echo = echo
        self.imei = imei
        self.csq = csq
        self.ber = ber
        self.register_after_polls = register_after_polls
        self.roaming = roaming
        self.bind_host = bind_host
        self.space = space_after_colon
        self.iccid = iccid
        self.sim_inserted = sim_inserted
        self.model = "BC95HB-02-STD_900"
        self.firmware = "BC95HBR01A01"
        self.bands: tuple[int, ...] = (8,)
        #: AT+CPSMS: mode and the requested timers (T3412 extended, T3324; 3GPP 8-bit strings)
        self.psm_mode = 1
        self.psm_tau = "00111000"  # 24 h
        self.psm_active = "00100010"  # 2 min
        #: what the network granted, shown by AT+CEREG? in mode 4 while registered
        self.granted_tau = "00100110"  # 6 h
        self.granted_active = "00100001"  # 1 min
        self.faults = SimFaults()
        self.sent_datagrams: list[SentDatagram] = []
        #: The last 10,000 commands received and lines sent: ``("<", "AT+CSQ")``, ``(">", "OK")``.
        self.transcript: deque[tuple[str, str]] = deque(maxlen=10_000)
        self.commands: list[str] = []
        self.sockets: dict[int, _SimSocket] = {}
        self.cereg_polls = 0
        self.cereg_urc_mode = 0
        self.forced_stat: int | None = None
        self.echo = echo
        self.cmee = 0
        self.plugged = False
        self._master = -1
        self._input = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._command_seen = asyncio.Event()
        self._held: list[bytes] = []

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.replug()

    async def stop(self) -> None:
        self.unplug()

    @property
    def stat(self) -> int:
        """The registration state ``AT+CEREG?`` reports now: 2 (searching) until it has been
        polled ``register_after_polls`` times, then 1 (home) or 5 (roaming); or what
        :meth:`set_registration` forced."""
        if not self.sim_inserted:
            return 0  # no SIM: not registered, not searching
        if self.forced_stat is not None:
            return self.forced_stat
        if self.cereg_polls < self.register_after_polls:
            return 2
        return 5 if self.roaming else 1

    @property
    def registered(self) -> bool:
        return self.stat in (1, 5)

    def set_registration(self, stat: int | None) -> None:
        """Force the registration state (0-5; None: back to the polling model) and send the
        ``+CEREG:<stat>`` URC if the client enabled it with ``AT+CEREG=1``."""
        before = self.stat
        self.forced_stat = stat
        if self.cereg_urc_mode and self.stat != before:
            self._send_lines([self._info("+CEREG", self.stat).encode()])

    def remove_sim(self) -> None:
        """Take the SIM out: ICCID and IMSI queries answer ``+CME ERROR:10``, the modem stops
        searching (``<stat>`` 0), the signal is not known (CSQ 99)."""
        before = self.stat
        self.sim_inserted = False
        if self.cereg_urc_mode and self.stat != before:
            self._send_lines([self._info("+CEREG", self.stat).encode()])

    def insert_sim(self, iccid: str | None = None) -> None:
        """Put a SIM (back) in."""
        before = self.stat
        self.sim_inserted = True
        if iccid is not None:
            self.iccid = iccid
        if self.cereg_urc_mode and self.stat != before:
            self._send_lines([self._info("+CEREG", self.stat).encode()])

    def set_signal(self, csq: int, ber: int | None = None) -> None:
        """The signal ``AT+CSQ`` reports from now on (0-31, 99 unknown)."""
        if not (0 <= csq <= 31 or csq == 99):
            raise ValueError(f"CSQ {csq} is outside 0-31 and not 99")
        self.csq = csq
        if ber is not None:
            self.ber = ber

    @property
    def port_path(self) -> str:
        """The stable port: a symlink to the current pty slave (gone while unplugged)."""
        return self.link.path

    @property
    def slave_path(self) -> str:
        """The pty slave behind :attr:`port_path` now (``/dev/pts/7``); empty when unplugged."""
        return self.link.device

    def replug(self) -> None:
        """Plug the modem (back) in: a new pty, the symlink re-pointed at its slave."""
        if self.plugged:
            return
        self.link.open()
        self._master = self.link.master_fd
        assert self._loop is not None, "start() first"
        self._loop.add_reader(self._master, self._on_readable)
        self.plugged = True
        self._reset_state()
        log.info("nbiot sim plugged", port=self.port_path, pty=self.slave_path)

    def unplug(self) -> None:
        """Pull the modem out: the pty master closes (clients see EOF / EIO), the symlink
        disappears, the modem loses its sockets."""
        if not self.plugged:
            return
        self.plugged = False
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        self.link.hangup()
        self._master = -1
        self._close_sockets()
        self._input.clear()
        log.info("nbiot sim unplugged", port=self.port_path)

    def reboot(self, cause: str = "REBOOT_CAUSE_APPLICATION_AT") -> None:
        """Restart the modem: sockets lost, session settings reset, boot banner sent."""
        self._close_sockets()
        self._reset_state()
        self._send_lines([cause.encode(), b"Neul ", b"OK"])
        log.info("nbiot sim rebooted", cause=cause)

    def send_urc(self, line: str) -> None:
        """Send an unsolicited line now (``+NPSMR:1``, ``+CEREG:1``)."""
        self._send_lines([line.encode("latin-1")])

    def socket_port(self, socket_id: int) -> int:
        """The real local UDP port behind modem socket ``socket_id``."""
        return self.sockets[socket_id].local_port

    def _reset_state(self) -> None:
        self._held = []
        self.echo = self.default_echo
        self.cmee = 0
        self.cereg_urc_mode = 0

    def _close_sockets(self) -> None:
        for sim_socket in self.sockets.values():
            if self._loop is not None:
                self._loop.remove_reader(sim_socket.sock.fileno())
            sim_socket.sock.close()
        self.sockets.clear()

    # -- serial side ------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # pragma: no cover - we hold a slave fd, so no EIO
            log.warning("nbiot sim read failed", error=str(exc))
            return
        self._input += data
        while True:
            ends = [i for i in (self._input.find(b"\r"), self._input.find(b"\n")) if i >= 0]
            if not ends:
                break
            end = min(ends)
            raw = bytes(self._input[:end])
            del self._input[: end + 1]
            if self.echo and raw.strip():
                self._write(raw + b"\r")
            command = raw.decode("latin-1").strip()
            if command:
                self._on_command(command)
        if len(self._input) > _MAX_INPUT:
            self._input.clear()

    async def wait_for_command(self, prefix: str, *, after: int = 0, timeout_s: float = 2.0) -> int:
        """Wait until a command starting with ``prefix`` has been received (at an index of
        :attr:`commands` >= ``after``); its index. TimeoutError after ``timeout_s``."""
        upper = prefix.upper()
        async with asyncio.timeout(timeout_s):
            while True:
                for index in range(after, len(self.commands)):
                    if self.commands[index].upper().startswith(upper):
                        return index
                after = max(after, len(self.commands))
                self._command_seen.clear()
                await self._command_seen.wait()

    def _on_command(self, command: str) -> None:
        self.commands.append(command)
        self._command_seen.set()
        self.transcript.append(("<", command))
        log.debug("nbiot sim command", command=command)
        rule = self.faults.take(command)
        held, self._held = self._held, []
        self._send_lines(held)
        if rule is not None and rule.before:
            self._send_lines(rule.before)
        if rule is not None and rule.reply is not None:
            lines = rule.reply
        else:
            lines = [line.encode("latin-1") for line in self._answer(command)]
        if rule is not None and rule.late:
            self._held = lines
        else:
            self._send_lines(lines)

    def _send_lines(self, lines: list[bytes]) -> None:
        if not lines:
            return
        for line in lines:
            self.transcript.append((">", line.decode("latin-1")))
            log.debug("nbiot sim response", line=line.decode("latin-1"))
        self._write(b"".join(b"\r\n" + line + b"\r\n" for line in lines))

    def _write(self, data: bytes) -> None:
        if not self.plugged:
            return
        try:
            os.write(self._master, data)
        except OSError as exc:  # pragma: no cover - a full pty buffer: the client stopped reading
            log.warning("nbiot sim write failed", error=str(exc))

    # -- the command set --------------------------------------------------------------

    def _info(self, name: str, value: object) -> str:
        return format_info(name, str(value), space=self.space)

    def _error(self, code: int) -> str:
        if self.cmee:
            return self._info("+CME ERROR", code)
        return "ERROR"

    def _answer(self, command: str) -> list[str]:
        upper = command.upper()
        name, _, args = upper.partition("=")
        try:
            if upper in ("AT", "ATZ"):
                return ["OK"]
            if upper in ("ATE0", "ATE1", "ATE"):
                self.echo = upper == "ATE1"
                return ["OK"]
            if upper == "ATI":
                return ["Quectel", self.model, f"Revision:{self.firmware}", "OK"]
            if upper == "AT+NRB":
                loop = self._loop
                assert loop is not None
                loop.call_soon(self.reboot, "REBOOT_CAUSE_APPLICATION_AT")
                return ["REBOOTING"]
            handler = _HANDLERS.get(name.rstrip("?")) if name.startswith("AT+") else None
            if handler is None:
                return ["ERROR"]
            return [*handler(self, name, args, command.partition("=")[2]), "OK"]
        except _CommandError as exc:
            return [self._error(exc.code)]

    def _cmee(self, name: str, args: str, raw: str) -> list[str]:
        if name.endswith("?"):
            return [self._info("+CMEE", self.cmee)]
        if args not in ("0", "1"):
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        self.cmee = int(args)
        return []

    def _cgsn(self, name: str, args: str, raw: str) -> list[str]:
        if args != "1":
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        return [self._info("+CGSN", self.imei)]

    def _csq(self, name: str, args: str, raw: str) -> list[str]:
        if not self.sim_inserted:
            return [self._info("+CSQ", "99,99")]
        return [self._info("+CSQ", f"{self.csq},{self.ber}")]

    def _cereg(self, name: str, args: str, raw: str) -> list[str]:
        if name.endswith("?"):
            stat = self.stat
            self.cereg_polls += 1
            value = f"{self.cereg_urc_mode},{stat}"
            if self.cereg_urc_mode >= 4 and stat in (1, 5):
                value += f',"1A2B","0C3D4E5F",9,,,"{self.granted_active}","{self.granted_tau}"'
            elif self.cereg_urc_mode >= 2 and stat in (1, 5):
                value += ',"1A2B","0C3D4E5F",9'
            return [self._info("+CEREG", value)]
        if args not in ("0", "1", "2", "3", "4", "5"):
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        self.cereg_urc_mode = int(args)
        return []

    def _cgatt(self, name: str, args: str, raw: str) -> list[str]:
        if name.endswith("?"):
            return [self._info("+CGATT", int(self.registered))]
        if args not in ("0", "1"):
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        if not self.sim_inserted:
            raise _CommandError(CME_SIM_NOT_INSERTED)
        return []

    def _sim_id(self, name: str, args: str, raw: str) -> list[str]:
        if not self.sim_inserted:
            raise _CommandError(CME_SIM_NOT_INSERTED)
        if name == "AT+CIMI":
            return ["460041234567890"]
        return [self._info("+NCCID", self.iccid)]

    def _nband(self, name: str, args: str, raw: str) -> list[str]:
        if name.endswith("?"):
            return [self._info("+NBAND", ",".join(str(b) for b in self.bands))]
        try:
            bands = tuple(int(b) for b in args.split(","))
        except ValueError:
            raise _CommandError(CME_INCORRECT_PARAMETERS) from None
        self.bands = bands
        return []

    def _nuestats(self, name: str, args: str, raw: str) -> list[str]:
        """BC95's radio statistics (centibels); -32768 while not camped on a cell."""
        camped = self.sim_inserted and self.registered and self.csq != 99
        rsrp = (-113 + 2 * self.csq - 22) * 10 - 3 if camped else -32768
        snr = (self.csq - 12) * 10 + 4 if camped else -32768
        return [
            f"Signal power:{rsrp}",
            f"Total power:{rsrp + 100 if camped else -32768}",
            "TX power:-32768",
            "TX time:0",
            "RX time:7916",
            f"Cell ID:{'21450498' if camped else '-1'}",
            "ECL:0",
            f"SNR:{snr}",
            "EARFCN:2506",
            "PCI:301",
            "RSRQ:-108",
        ]

    def _cpsms(self, name: str, args: str, raw: str) -> list[str]:
        if name.endswith("?"):
            return [self._info("+CPSMS", f"{self.psm_mode},,,{self.psm_tau},{self.psm_active}")]
        fields = [f.strip().strip('"') for f in raw.split(",")]
        if not fields or fields[0] not in ("0", "1", "2"):
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        self.psm_mode = 1 if fields[0] == "1" else 0
        if len(fields) > 3 and fields[3]:
            self.psm_tau = fields[3]
        if len(fields) > 4 and fields[4]:
            self.psm_active = fields[4]
        return []

    def _cgdcont(self, name: str, args: str, raw: str) -> list[str]:
        if name.endswith("?"):
            return [self._info("+CGDCONT", '1,"IP",""')]
        if not args:
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        return []

    def _nsocr(self, name: str, args: str, raw: str) -> list[str]:
        fields = args.split(",")
        if len(fields) not in (3, 4) or fields[0] != "DGRAM" or fields[1] != "17":
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        port = _int_in(fields[2], 0, 65535)
        if len(fields) == 4:
            _int_in(fields[3], 0, 1)
        free = [i for i in range(MAX_SOCKETS) if i not in self.sockets]
        if not free:
            raise _CommandError(CME_OPERATION_NOT_ALLOWED)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.bind_host, port))
        except OSError:
            sock.close()
            raise _CommandError(CME_OPERATION_NOT_ALLOWED) from None
        sock.setblocking(False)
        socket_id = free[0]
        self.sockets[socket_id] = _SimSocket(sock, sock.getsockname()[1])
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._on_datagram, socket_id)
        return [str(socket_id)]

    def _socket(self, value: str) -> _SimSocket:
        sim_socket = self.sockets.get(_int_in(value, 0, 255))
        if sim_socket is None:
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        return sim_socket

    def _nsost(self, name: str, args: str, raw: str) -> list[str]:
        fields = raw.split(",")
        if len(fields) != 5:
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        sim_socket = self._socket(fields[0])
        try:
            host = str(ipaddress.IPv4Address(fields[1].strip()))
        except ValueError:
            raise _CommandError(CME_INCORRECT_PARAMETERS) from None
        port = _int_in(fields[2], 1, 65535)
        length = _int_in(fields[3], 1, MAX_DATAGRAM)
        try:
            data = bytes.fromhex(fields[4])
        except ValueError:
            raise _CommandError(CME_INCORRECT_PARAMETERS) from None
        if len(data) != length:
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        if not self.registered:
            raise _CommandError(CME_OPERATION_NOT_ALLOWED)
        try:
            sim_socket.sock.sendto(data, (host, port))
        except OSError:
            raise _CommandError(CME_OPERATION_NOT_ALLOWED) from None
        socket_id = int(fields[0])
        self.sent_datagrams.append(SentDatagram(socket_id, host, port, data, sim_socket.local_port))
        return [f"{socket_id},{length}"]

    def _nsorf(self, name: str, args: str, raw: str) -> list[str]:
        fields = args.split(",")
        if len(fields) != 2:
            raise _CommandError(CME_INCORRECT_PARAMETERS)
        sim_socket = self._socket(fields[0])
        wanted = _int_in(fields[1], 1, MAX_DATAGRAM)
        if not sim_socket.inbox:
            return []
        host, port, data = sim_socket.inbox[0]
        chunk = bytes(data[:wanted])
        del data[:wanted]
        if not data:
            sim_socket.inbox.popleft()
        return [format_nsorf(int(fields[0]), host, port, chunk, len(data))]

    def _nsocl(self, name: str, args: str, raw: str) -> list[str]:
        sim_socket = self._socket(args)
        if self._loop is not None:
            self._loop.remove_reader(sim_socket.sock.fileno())
        sim_socket.sock.close()
        del self.sockets[int(args)]
        return []

    def _on_datagram(self, socket_id: int) -> None:
        sim_socket = self.sockets.get(socket_id)
        if sim_socket is None:  # pragma: no cover - the reader goes with the socket
            return
        try:
            data, (host, port) = sim_socket.sock.recvfrom(65535)
        except OSError:
            return
        if len(sim_socket.inbox) >= MAX_QUEUED or len(data) > MAX_DATAGRAM:
            log.warning("nbiot sim dropped datagram", socket=socket_id, size=len(data))
            return
        sim_socket.inbox.append((host, port, bytearray(data)))
        self._send_lines([self._info("+NSONMI", f"{socket_id},{len(data)}").encode()])


def _int_in(value: str, low: int, high: int) -> int:
    try:
        number = int(value.strip())
    except ValueError:
        raise _CommandError(CME_INCORRECT_PARAMETERS) from None
    if not low <= number <= high:
        raise _CommandError(CME_INCORRECT_PARAMETERS)
    return number


_HANDLERS = {
    "AT+CMEE": NbIotModemSim._cmee,
    "AT+CGSN": NbIotModemSim._cgsn,
    "AT+CSQ": NbIotModemSim._csq,
    "AT+CEREG": NbIotModemSim._cereg,
    "AT+CGATT": NbIotModemSim._cgatt,
    "AT+CGDCONT": NbIotModemSim._cgdcont,
    "AT+NCCID": NbIotModemSim._sim_id,
    "AT+CIMI": NbIotModemSim._sim_id,
    "AT+NBAND": NbIotModemSim._nband,
    "AT+NUESTATS": NbIotModemSim._nuestats,
    "AT+CPSMS": NbIotModemSim._cpsms,
    "AT+NSOCR": NbIotModemSim._nsocr,
    "AT+NSOST": NbIotModemSim._nsost,
    "AT+NSORF": NbIotModemSim._nsorf,
    "AT+NSOCL": NbIotModemSim._nsocl,
}


@asynccontextmanager
async def run_nbiot_modem(
    *,
    link_dir: str | None = None,
    echo: bool = True,
    imei: str = "866123045678901",
    csq: int = 24,
    ber: int = 99,
    register_after_polls: int = 0,
    roaming: bool = False,
    bind_host: str = "127.0.0.1",
    space_after_colon: bool = False,
    iccid: str = "89860425102180012345",
    sim_inserted: bool = True,
) -> AsyncIterator[NbIotModemSim]:
    """Run a simulated modem until the block exits; ``sim.port_path`` is the stable port.

    ``link_dir`` None: the symlink (``ttyNB0``) lives in a temporary directory removed
    afterwards.
    """
    link = PtyLink(name="ttyNB0", directory=link_dir)
    sim = NbIotModemSim(
        link=link,
        echo=echo,
        imei=imei,
        csq=csq,
        ber=ber,
        register_after_polls=register_after_polls,
        roaming=roaming,
        bind_host=bind_host,
        space_after_colon=space_after_colon,
        iccid=iccid,
        sim_inserted=sim_inserted,
    )
    try:
        await sim.start()
        yield sim
    finally:
        await sim.stop()
        link.close()
