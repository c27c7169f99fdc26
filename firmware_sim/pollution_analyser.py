"""A simulated air-quality analyser / data logger speaking HJ 212-2017.

It measures PM2.5 (a34004), PM10 (a34002), SO2 (a21026), NO2 (a21004), O3 (a05024),
CO (a21005), noise (LA), temperature (a01001) and humidity (a01002) with daily cycles (traffic
peaks for PM/NO2/CO/noise, an afternoon O3 peak, warm afternoons, humid nights) and
mean-reverting noise; deterministic for a given ``seed`` and ``clock``.

Like a real logger it *uploads*: real-time data (2011) every ``rtd_interval_s``, and when the
device clock passes a minute, an hour or a day, the minute (2051), hour (2061) and day (2031)
aggregates
(Avg/Min/Max of the real-time values of that period, flag ``N`` unless a flag was injected).
Its uploads ask for an answer (Flag=5) and are re-sent when no 9014 comes. It answers
1011/1012 (time get/set), 1061/1062 (real-time interval) and 2051/2061/2031 history requests
(BeginTime/EndTime, from its own stored records) with 9011, the data, and 9012.

Transports: a pseudo-terminal (the simulator holds the master; clients open
:attr:`PollutionAnalyser.pty_path`), TCP as a client of an upper system (``connect_to``, as
real loggers do; reconnecting when the connection drops), or TCP listening (``listen``).

Faults (:meth:`PollutionAnalyser.inject`): ``bad_crc``, ``bad_length``, ``garbage`` (bytes before
the next frame), ``split`` (the next upload in several packets), ``no_answer`` (ignore the next
request). Everything sent and received is kept in :attr:`PollutionAnalyser.sent` /
:attr:`PollutionAnalyser.received` and logged.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import tty
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, Self

import structlog

from drivers.errors import ConnectError
from drivers.hj212.codec import (
    VERSION_2017,
    AckTimeout,
    CpData,
    FieldError,
    Frame,
    format_time,
)
from drivers.hj212.crc import crc16, format_crc
from drivers.hj212.messages import (
    CN_DAY,
    CN_HOUR,
    CN_MINUTE,
    CN_REALTIME,
    DataUpload,
    GetRtdInterval,
    GetTime,
    HistoryRequest,
    Pollutant,
    SetRtdInterval,
    SetTime,
    TimeReport,
    format_number,
    parse_message,
)
from drivers.hj212.session import FdLink, Hj212Session, StreamLink, is_request

__all__ = [
    "DEFAULT_MN",
    "POLLUTANTS",
    "Fault",
    "PollutantSpec",
    "PollutionAnalyser",
    "PollutionModel",
    "run_pollution_analyser",
]

log = structlog.get_logger(__name__)

DEFAULT_MN = "010000A8900016F000169DC0"  # the MN of the standard's examples
Fault = Literal["bad_crc", "bad_length", "garbage", "split", "no_answer"]
_FLAG_UPLOAD_ACK = (VERSION_2017 << 2) | 1  # Flag=5
_FLAG_PLAIN = VERSION_2017 << 2  # Flag=4
_DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class PollutantSpec:
    """One measured quantity: code, unit, level, daily swing, noise and decimals."""

    code: str
    name: str
    unit: str
    base: float
    swing: float
    noise: float
    decimals: int
    low: float
    high: float
    shape: Literal["traffic", "afternoon", "night"] = "traffic"


POLLUTANTS: tuple[PollutantSpec, ...] = (
    PollutantSpec("a34004", "PM2.5", "µg/m³", 35.0, 20.0, 3.0, 1, 0.0, 1000.0),
    PollutantSpec("a34002", "PM10", "µg/m³", 60.0, 30.0, 5.0, 1, 0.0, 2000.0),
    PollutantSpec("a21026", "SO2", "µg/m³", 12.0, 5.0, 1.0, 1, 0.0, 2000.0),
    PollutantSpec("a21004", "NO2", "µg/m³", 35.0, 25.0, 3.0, 1, 0.0, 1000.0),
    PollutantSpec("a05024", "O3", "µg/m³", 60.0, 50.0, 4.0, 1, 0.0, 800.0, "afternoon"),
    PollutantSpec("a21005", "CO", "mg/m³", 0.7, 0.4, 0.05, 3, 0.0, 50.0),
    PollutantSpec("LA", "noise", "dB(A)", 58.0, 8.0, 1.5, 1, 20.0, 130.0),
    PollutantSpec("a01001", "temperature", "°C", 18.0, 6.0, 0.2, 1, -40.0, 60.0, "afternoon"),
    PollutantSpec("a01002", "humidity", "%", 60.0, 20.0, 1.0, 1, 0.0, 100.0, "night"),
)


def _daily(shape: str, hour: float) -> float:
    """A -1..1 daily profile."""
    if shape == "afternoon":
        return math.cos(2 * math.pi * (hour - 15.0) / 24.0)
    if shape == "night":
        return math.cos(2 * math.pi * (hour - 4.0) / 24.0)
    # traffic: peaks at 08:00 and 18:00, low at night
    morning = math.exp(-(((hour - 8.0) / 1.8) ** 2))
    evening = math.exp(-(((hour - 18.0) / 2.2) ** 2))
    return 2.0 * max(morning, evening) - 1.0


class PollutionModel:
    """The physics: a value per pollutant for a moment, deterministic per seed."""

    def __init__(self, *, seed: int | None = None) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - physics noise, not cryptography
        self._drift = {p.code: 0.0 for p in POLLUTANTS}
        #: Values pinned by :meth:`force`.
        self.forced: dict[str, float] = {}

    def force(self, code: str, value: float) -> None:
        self.forced[code] = value

    def release(self, code: str) -> None:
        self.forced.pop(code, None)

    def sample(self, moment: datetime) -> dict[str, float]:
        hour = moment.hour + moment.minute / 60 + moment.second / 3600
        values: dict[str, float] = {}
        for spec in POLLUTANTS:
            drift = 0.9 * self._drift[spec.code] + self.rng.gauss(0.0, spec.noise)
            self._drift[spec.code] = drift
            value = spec.base + spec.swing * _daily(spec.shape, hour) + drift
            value = min(spec.high, max(spec.low, value))
            value = self.forced.get(spec.code, value)
            values[spec.code] = round(value, spec.decimals)
        return values


@dataclass
class _Period:
    """Real-time samples of one aggregation period."""

    start: datetime
    samples: list[dict[str, float]] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)


_SPECS = {p.code: p for p in POLLUTANTS}


class PollutionAnalyser:
    """The simulated device. Prefer :func:`run_pollution_analyser`."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        mn: str = DEFAULT_MN,
        pw: str = "123456",
        st: str = "22",
        transport: Literal["pty", "tcp_client", "tcp_server"] = "pty",
        connect_to: tuple[str, int] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rtd_interval_s: float | None = 30.0,
        upload_ack: bool = True,
        timeout_s: float = 5.0,
        retries: int = 3,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.model = PollutionModel(seed=seed)
        self._fault_rng = random.Random(seed)  # noqa: S311 - garbage bytes, not cryptography
        self.mn, self.pw, self.st = mn, pw, st
        self.transport = transport
        self.connect_to = connect_to
        self.host, self.port = host, port
        self.rtd_interval_s = rtd_interval_s
        self.upload_ack = upload_ack
        self.timeout_s, self.retries = timeout_s, retries
        self._base_clock = clock
        #: Device clock minus the base clock (changed by 1012).
        self.clock_offset = timedelta()
        #: Stored uploads by CN (history answers come from here).
        self.history: dict[str, list[DataUpload]] = {CN_MINUTE: [], CN_HOUR: [], CN_DAY: []}
        self.realtime: list[DataUpload] = []
        self._pending: list[DataUpload] = []
        self._all_sessions: list[Hj212Session] = []
        #: Raw bytes written (including faults), newest last.
        self.wire: deque[bytes] = deque(maxlen=5000)
        #: Uploads that got no 9014 after the retries.
        self.unanswered: list[Frame] = []
        #: Faults in force: frames (or requests) left, None until cleared.
        self.faults: dict[str, int | None] = {}
        self.flags: dict[str, str] = {}
        self.sessions: list[Hj212Session] = []
        self.pty_path: str | None = None
        self._slave_fd: int | None = None
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._periods: dict[str, _Period] = {}  # open aggregation periods by CN
        self._connected = asyncio.Event()

    @property
    def sent(self) -> list[Frame]:
        """Every frame (packet) sent, over all connections so far, oldest first."""
        return [f for s in self._all_sessions for f in s.sent]

    @property
    def received(self) -> list[Frame]:
        """Every frame received (answers included), over all connections, oldest first."""
        return [f for s in self._all_sessions for f in s.received]

    # -- clock, flags, faults ---------------------------------------------------------------

    def now(self) -> datetime:
        """The device clock."""
        return self._base_clock() + self.clock_offset

    def set_flag(self, code: str, flag: str) -> None:
        """Report ``code`` with data flag ``flag`` (N, F, M, S, D, C, T, B) from now on."""
        self.flags[code] = flag

    def inject(self, fault: Fault, count: int | None = 1) -> None:
        """Apply ``fault`` to the next ``count`` frames (or requests, for ``no_answer``); with
        ``count`` None to every one until ``faults.clear()``."""
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None, got {count}")
        left = self.faults.get(fault, 0)
        self.faults[fault] = None if count is None or left is None else left + count

    def _take(self, fault: Fault) -> bool:
        if fault not in self.faults:
            return False
        left = self.faults[fault]
        if left is not None:
            if left <= 1:
                del self.faults[fault]
            else:
                self.faults[fault] = left - 1
        return True

    def _mangle(self, data: bytes) -> bytes:
        if self._take("bad_crc"):
            good = data[-6:-2]
            bad = format_crc(crc16(data[6:-6]) ^ 0x5A5A).encode()
            data = data[:-6] + (bad if bad != good else b"0000") + data[-2:]
        if self._take("bad_length"):
            declared = int(data[2:6])
            data = data[:2] + b"%04d" % ((declared + 7) % 10000) + data[6:]
        if self._take("garbage"):
            data = (
                bytes(self._fault_rng.randrange(256) for _ in range(23)).replace(b"#", b"") + data
            )
        self.wire.append(data)
        return data

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self.transport == "pty":
            master, slave = os.openpty()
            tty.setraw(slave)
            self._slave_fd = slave  # held open so the master never reads EIO between clients
            self.pty_path = os.ttyname(slave)
            self._add_session(FdLink(master, f"pty:{self.pty_path}"))
        elif self.transport == "tcp_server":
            self._server = await asyncio.start_server(self._on_client, self.host, self.port)
            self.port = int(self._server.sockets[0].getsockname()[1])
        else:
            if self.connect_to is None:
                raise ValueError("transport tcp_client needs connect_to=(host, port)")
            self._tasks.append(asyncio.create_task(self._dial(), name="analyser dial"))
        if self.rtd_interval_s is not None:
            self._tasks.append(asyncio.create_task(self._tick(), name="analyser tick"))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for session in self.sessions:
            await session.aclose()
        self.sessions.clear()
        if self._slave_fd is not None:
            os.close(self._slave_fd)
            self._slave_fd = None

    async def wait_connected(self, timeout_s: float = 5.0) -> None:
        """Wait until a peer is connected (TCP) - at once for a pty."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    def _add_session(self, link: FdLink | StreamLink) -> Hj212Session:
        session = Hj212Session(link, timeout_s=self.timeout_s, retries=self.retries, clock=self.now)
        session.handler = lambda frame: self._on_frame(session, frame)
        session.outgoing_filter = self._mangle
        session.start()
        self._all_sessions.append(session)
        self.sessions = [s for s in self.sessions if not s.closed.is_set()] + [session]
        self._connected.set()
        log.info("analyser connected", link=link.name, mn=self.mn)
        return session

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._add_session(StreamLink(reader, writer))

    async def _dial(self) -> None:
        assert self.connect_to is not None
        host, port = self.connect_to
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                log.debug("analyser cannot connect", host=host, port=port, error=str(exc))
                await asyncio.sleep(delay)  # reconnect back-off, as a logger does
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.05
            session = self._add_session(StreamLink(reader, writer))
            await session.closed.wait()
            self._connected.clear()
            await session.aclose()

    # -- uploads ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        assert self.rtd_interval_s is not None
        while True:
            await self.send_realtime()
            await asyncio.sleep(self.rtd_interval_s)  # the upload period itself

    def measure(self) -> DataUpload:
        """Take one real-time sample (closing the minute/hour/day periods the clock left)."""
        now = self.now().replace(microsecond=0)
        starts = {
            CN_MINUTE: now.replace(second=0),
            CN_HOUR: now.replace(second=0, minute=0),
            CN_DAY: now.replace(second=0, minute=0, hour=0),
        }
        for cn, start in starts.items():
            period = self._periods.get(cn)
            if period is not None and period.start != start:
                self._close_period(cn)
        values = self.model.sample(now)
        for cn, start in starts.items():
            period = self._periods.setdefault(cn, _Period(start))
            period.samples.append(values)
            for code, flag in self.flags.items():
                if flag != "N":
                    period.flags[code] = flag
        upload = DataUpload(
            CN_REALTIME,
            now,
            {
                code: Pollutant(
                    code,
                    {
                        "Rtd": format_number(value, _SPECS[code].decimals),
                        "Flag": self.flags.get(code, "N"),
                    },
                )
                for code, value in values.items()
            },
        )
        self.realtime.append(upload)
        return upload

    def _close_period(self, cn: str) -> DataUpload | None:
        period = self._periods.pop(cn, None)
        if period is None or not period.samples:
            return None
        pollutants = {}
        for code in period.samples[0]:
            series = [sample[code] for sample in period.samples]
            dec = _SPECS[code].decimals
            pollutants[code] = Pollutant(
                code,
                {
                    "Avg": format_number(sum(series) / len(series), dec),
                    "Min": format_number(min(series), dec),
                    "Max": format_number(max(series), dec),
                    "Flag": period.flags.get(code, "N"),
                },
            )
        record = DataUpload(cn, period.start, pollutants)
        self.history[cn].append(record)
        self._pending.append(record)
        return record

    async def send_realtime(self) -> DataUpload:
        """Sample now and upload 2011 (plus any minute/hour records the clock completed)."""
        upload = self.measure()
        await self._upload(upload)
        await self._flush_pending()
        return upload

    async def send_minute(self) -> DataUpload | None:
        """Close the current minute now and upload its 2051 record (None if no samples)."""
        record = self._close_period(CN_MINUTE)
        await self._flush_pending()
        return record

    async def send_hour(self) -> DataUpload | None:
        """Close the current hour now and upload its 2061 record (None if no samples)."""
        record = self._close_period(CN_HOUR)
        await self._flush_pending()
        return record

    async def send_day(self) -> DataUpload | None:
        """Close the current day now and upload its 2031 record (None if no samples)."""
        record = self._close_period(CN_DAY)
        await self._flush_pending()
        return record

    async def _flush_pending(self) -> None:
        while self._pending:
            await self._upload(self._pending.pop(0))

    async def _upload(self, upload: DataUpload) -> None:
        for session in [s for s in self.sessions if not s.closed.is_set()]:
            frame = Frame(
                cn=upload.cn,
                st=self.st,
                pw=self.pw,
                mn=self.mn,
                flag=_FLAG_UPLOAD_ACK if self.upload_ack else _FLAG_PLAIN,
                cp=upload.cp(),
                qn=session.new_qn(),
            )
            split = self._take("split")
            if split:
                session.max_segment = 200
            try:
                await session.send(frame)
            except AckTimeout as exc:
                log.warning("analyser upload unanswered", cn=upload.cn, error=str(exc))
                self.unanswered.append(frame)
            except ConnectError as exc:
                log.info("analyser link lost", error=str(exc))
            finally:
                if split:
                    session.max_segment = 1024

    # -- requests ---------------------------------------------------------------------------

    async def _on_frame(self, session: Hj212Session, frame: Frame) -> None:
        log.info("analyser received", cn=frame.cn, qn=frame.qn)
        try:
            message = parse_message(frame)
        except FieldError:
            await session.answer(frame, "9011", CpData.of({"QnRtn": "100"}))
            return
        if not is_request(message):
            return
        if self._take("no_answer"):
            log.info("analyser ignores a request (fault)", cn=frame.cn, qn=frame.qn)
            return
        refusal = self._check_request(frame)
        await session.answer(frame, "9011", CpData.of({"QnRtn": str(refusal)}))
        if refusal != 1:
            return
        exe_rtn = 1
        if isinstance(message, GetTime):
            await self._reply(session, frame, TimeReport(self.now(), message.pol_id).cp())
        elif isinstance(message, SetTime):
            self.clock_offset = message.system_time - self._base_clock()
            log.info("analyser clock set", time=format_time(message.system_time))
        elif isinstance(message, GetRtdInterval):
            interval = round(self.rtd_interval_s or 0)
            await self._reply(session, frame, GetRtdInterval(interval).cp())
        elif isinstance(message, SetRtdInterval):
            self.rtd_interval_s = float(message.interval_s)
        elif isinstance(message, HistoryRequest):
            records = [
                r
                for r in self.history.get(message.cn, [])
                if message.begin <= r.data_time <= message.end
            ]
            for record in records:
                await self._reply(session, frame, record.cp())
            exe_rtn = 1 if records else 100
        else:
            exe_rtn = 2
        await session.answer(frame, "9012", CpData.of({"ExeRtn": str(exe_rtn)}))

    def _check_request(self, frame: Frame) -> int:
        if frame.pw != self.pw:
            return 3
        if frame.mn != self.mn:
            return 4
        return 1

    async def _reply(self, session: Hj212Session, request: Frame, cp: CpData) -> None:
        await session.write_frame(
            Frame(
                qn=request.qn,
                st=self.st,
                cn=request.cn,
                pw=self.pw,
                mn=self.mn,
                flag=_FLAG_PLAIN,
                cp=cp,
            )
        )


@asynccontextmanager
async def run_pollution_analyser(
    *,
    seed: int | None = None,
    mn: str = DEFAULT_MN,
    pw: str = "123456",
    st: str = "22",
    transport: Literal["pty", "tcp_client", "tcp_server"] = "pty",
    connect_to: tuple[str, int] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    rtd_interval_s: float | None = 30.0,
    upload_ack: bool = True,
    timeout_s: float = 5.0,
    retries: int = 3,
    clock: Callable[[], datetime] = datetime.now,
) -> AsyncIterator[PollutionAnalyser]:
    """Run a :class:`PollutionAnalyser` (same keyword options) until the block exits::

    async with run_pollution_analyser(seed=1, rtd_interval_s=None) as sim:
        sim.pty_path                   # open this as the serial port
        await sim.send_realtime()      # upload one 2011 now
    """
    analyser = PollutionAnalyser(
        seed=seed,
        mn=mn,
        pw=pw,
        st=st,
        transport=transport,
        connect_to=connect_to,
        host=host,
        port=port,
        rtd_interval_s=rtd_interval_s,
        upload_ack=upload_ack,
        timeout_s=timeout_s,
        retries=retries,
        clock=clock,
    )
    async with analyser:
        yield analyser
