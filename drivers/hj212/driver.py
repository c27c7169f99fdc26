"""The HJ 212 driver: an analyser or data logger that pushes its data.

An HJ 212 device *uploads* (real-time 2011 every RtdInterval, minute 2051, hour 2061, day
2031); nobody polls it. The driver therefore listens all the time and keeps the latest value
of each ``(pollutant code, field)`` - e.g. ``(a34004, Rtd)`` - from 2011 and 2051 frames;
:meth:`Hj212Driver.read` returns those values and raises :class:`DriverTimeout` for a point
with no value younger than ``staleness_s`` (or the last frame error, if the stream has been
broken since the last good frame). Hour and day uploads are kept in :attr:`records`.

Transports: a serial line (the port opened non-blocking and driven by ``loop.add_reader``,
raw 8N1 at the configured rate), TCP as a server the logger dials into (the usual set-up; one
session per connection, frames of other MNs ignored when ``mn`` is set), or TCP as a client.
Requests - :meth:`get_time`, :meth:`set_time`, :meth:`history`, :meth:`set_rtd_interval` - go
to the newest connection. HJ 212 points are read-only: :meth:`write` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from device_profiles import DeviceProfile, Point, Value
from drivers.base import Driver
from drivers.errors import ConfigurationError, ConnectError, DriverTimeout
from drivers.hj212.codec import (
    CpData,
    FieldError,
    Frame,
    FrameError,
    Hj212Error,
)
from drivers.hj212.messages import (
    CN_MINUTE,
    CN_REALTIME,
    DATA_CNS,
    DataUpload,
    GetTime,
    HistoryRequest,
    SetRtdInterval,
    SetTime,
    TimeReport,
    parse_message,
)
from drivers.hj212.session import FdLink, Hj212Session, StreamLink
from drivers.hj212.settings import Hj212SerialSettings, Hj212TcpSettings
from drivers.serial_ports import resolve_serial_port

__all__ = ["Hj212Driver", "Reading"]

log = structlog.get_logger(__name__)

_SPEEDS = {
    rate: getattr(termios, f"B{rate}")
    for rate in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
}
_LIVE_CNS = (CN_REALTIME, CN_MINUTE)


class Reading:
    """The latest value of one (code, field), with when it arrived and its data flag."""

    __slots__ = ("arrived", "cn", "data_time", "flag", "text")

    def __init__(
        self, text: str, flag: str | None, data_time: datetime, cn: str, arrived: float
    ) -> None:
        self.text = text
        self.flag = flag
        self.data_time = data_time
        self.cn = cn
        self.arrived = arrived


class Hj212Driver(Driver):
    """A device speaking HJ 212-2017 over a serial line or TCP."""

    def __init__(
        self,
        profile: DeviceProfile,
        settings: Hj212SerialSettings | Hj212TcpSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        super().__init__(profile)
        if profile.transport != "hj212":
            raise ConfigurationError(
                f"profile '{profile.name}' speaks {profile.transport}, not HJ 212"
            )
        self.settings = settings
        self._monotonic = monotonic
        self._clock = clock
        self._sessions: list[Hj212Session] = []
        self._mn_of: dict[Hj212Session, str] = {}
        self._server: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._latest: dict[tuple[str, str], Reading] = {}
        self._last_good = float("-inf")
        self._last_error: tuple[float, FrameError] | None = None
        self._errors_seen = 0
        #: The latest uploads per CN (2011, 2051, 2061, 2031), newest last.
        self.records: dict[str, deque[DataUpload]] = {cn: deque(maxlen=1000) for cn in DATA_CNS}
        #: Frames of other MNs ignored (when ``mn`` is set).
        self.ignored = 0

    # -- Driver ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def bound_port(self) -> int:
        """The port listened on (TCP server mode), e.g. after ``listen_port=0``."""
        if self._server is None or not self._server.sockets:
            raise ConnectError(f"{self.endpoint}: not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sessions(self) -> list[Hj212Session]:
        """Open sessions, newest last."""
        return [s for s in self._sessions if not s.closed.is_set()]

    @property
    def error_count(self) -> int:
        return sum(s.error_count for s in self._sessions)

    @property
    def errors(self) -> list[FrameError]:
        return [e for s in self._sessions for e in s.errors]

    async def _connect(self) -> None:
        async with self._lock:
            await self._ensure_connected()

    async def _close(self) -> None:
        async with self._lock:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
                self._server = None
            sessions, self._sessions = self._sessions, []
            for session in sessions:
                await session.aclose()
            self._mn_of.clear()

    async def _read(self, names: Sequence[str]) -> dict[str, Value]:
        wanted = tuple(dict.fromkeys(names))
        points = {name: self.point(name) for name in wanted}
        async with self._lock:
            await self._ensure_connected()
        now = self._monotonic()
        result: dict[str, Value] = {}
        missing: list[str] = []
        for name, point in points.items():
            loc = point.hj212
            reading = self._latest.get((loc.code, loc.field))
            if reading is None or now - reading.arrived > self.settings.staleness_s:
                missing.append(name)
                continue
            result[name] = _raw_value(point, f"{loc.code}-{loc.field}", reading.text)
        if missing:
            if self._last_error is not None and self._last_error[0] > self._last_good:
                # the stream has been broken since the last good frame: say how
                raise self._last_error[1].with_traceback(None)
            raise DriverTimeout(
                f"{self.endpoint}: no value of {', '.join(missing)} within "
                f"{self.settings.staleness_s} s"
            )
        return result

    async def _write(self, name: str, raw: Value) -> None:
        self.point(name)
        raise ConfigurationError(f"point '{name}': HJ 212 points are read-only")

    # -- values and waiting ----------------------------------------------------------------

    def reading(self, code: str, field: str = "Rtd") -> Reading | None:
        """The latest reading of ``code-field``, with its flag and DataTime."""
        return self._latest.get((code, field))

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until ``predicate()`` holds, checked whenever frames or errors arrive."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    # -- requests -------------------------------------------------------------------------

    async def get_time(self, pol_id: str | None = None) -> datetime:
        """The device's clock (1011)."""
        for frame in await self._request(GetTime(pol_id).cn, GetTime(pol_id).cp()):
            message = parse_message(frame)
            if isinstance(message, TimeReport):
                return message.system_time
        raise FieldError("SystemTime", "the answer to 1011 carried no SystemTime")

    async def set_time(self, moment: datetime, pol_id: str | None = None) -> None:
        """Set the device's clock (1012)."""
        message = SetTime(moment, pol_id)
        await self._request(message.cn, message.cp())

    async def set_rtd_interval(self, interval_s: int) -> None:
        """Set the real-time upload interval (1062)."""
        message = SetRtdInterval(interval_s)
        await self._request(message.cn, message.cp())

    async def history(self, cn: str, begin: datetime, end: datetime) -> list[DataUpload]:
        """Stored minute (2051), hour (2061) or day (2031) data between begin and end."""
        if cn not in DATA_CNS or cn == CN_REALTIME:
            raise ConfigurationError(f"CN {cn} has no history (2051, 2061 or 2031)")
        message = HistoryRequest(cn, begin, end)
        uploads = []
        for frame in await self._request(cn, message.cp()):
            upload = parse_message(frame)
            if isinstance(upload, DataUpload):
                uploads.append(upload)
        return uploads

    async def _request(self, cn: str, cp: CpData) -> list[Frame]:
        async with self._lock:
            await self._ensure_connected()
        sessions = self.sessions
        if not sessions:
            raise ConnectError(f"{self.endpoint}: no device connected")
        wanted = self.settings.mn
        # the newest connection of the wanted device (any connection if none is known yet)
        matching = [x for x in sessions if wanted is None or self._mn_of.get(x) == wanted]
        session = (matching or sessions)[-1]
        mn = wanted or self._mn_of.get(session)
        if mn is None:
            raise ConnectError(f"{self.endpoint}: the device's MN is not known yet (set 'mn')")
        frame = Frame(cn=cn, st=self.settings.st, pw=self.settings.pw, mn=mn, cp=cp)
        return await session.request(frame)

    # -- connections ----------------------------------------------------------------------

    async def _ensure_connected(self) -> None:
        s = self.settings
        if isinstance(s, Hj212TcpSettings) and s.listening:
            if self._server is None:
                try:
                    self._server = await asyncio.start_server(
                        self._on_client, s.listen_host, s.listen_port
                    )
                except OSError as exc:
                    raise ConnectError(f"{self.endpoint}: cannot listen: {exc}") from exc
                log.info("hj212 listening", endpoint=self.endpoint, port=self.bound_port)
            return
        if self.sessions:
            return
        for session in self._sessions:
            await session.aclose()
        self._sessions.clear()
        if isinstance(s, Hj212SerialSettings):
            link: FdLink | StreamLink = _open_serial(s)
        else:
            assert s.host is not None
            assert s.port is not None
            try:
                async with asyncio.timeout(s.timeout_s):
                    reader, writer = await asyncio.open_connection(s.host, s.port)
            except (OSError, TimeoutError) as exc:
                raise ConnectError(f"{self.endpoint}: {exc or 'timeout'}") from exc
            link = StreamLink(reader, writer)
        self._start_session(link)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = self._start_session(StreamLink(reader, writer))
        log.info("hj212 logger connected", endpoint=self.endpoint, peer=session.name)

    def _start_session(self, link: FdLink | StreamLink) -> Hj212Session:
        s = self.settings
        session = Hj212Session(
            link,
            timeout_s=s.timeout_s,
            retries=s.retries,
            auto_ack=s.auto_ack,
            clock=self._clock,
            listener=self._on_activity,
        )
        session.handler = lambda frame: self._on_frame(session, frame)
        self._sessions = [*self.sessions, session]
        session.start()
        self._changed.set()
        return session

    def _on_frame(self, session: Hj212Session, frame: Frame) -> None:
        if self.settings.mn is not None and frame.mn != self.settings.mn:
            self.ignored += 1
            log.debug("hj212 frame of another MN ignored", mn=frame.mn)
            return
        self._mn_of[session] = frame.mn
        try:
            message = parse_message(frame)
        except Hj212Error as exc:
            self._note_error(exc)
            return
        if not isinstance(message, DataUpload):
            log.debug("hj212 frame not handled", cn=frame.cn, qn=frame.qn)
            return
        self.records[message.cn].append(message)
        now = self._monotonic()
        self._last_good = now
        if message.cn in _LIVE_CNS:
            for code, pollutant in message.pollutants.items():
                flag = pollutant.flag
                for field, text in pollutant.fields.items():
                    if field != "Flag":
                        self._latest[(code, field)] = Reading(
                            text, flag, message.data_time, message.cn, now
                        )
        self._changed.set()

    def _on_activity(self) -> None:
        count = self.error_count
        if count != self._errors_seen:
            self._errors_seen = count
            errors = self.errors
            if errors:
                self._note_error(errors[-1])
        self._changed.set()

    def _note_error(self, error: Hj212Error) -> None:
        if isinstance(error, FrameError):
            self._last_error = (self._monotonic(), error)

    async def next_error(self, timeout_s: float) -> FrameError:
        """Wait for the next frame error on any connection, and return it."""
        seen = self.error_count
        await self.wait_for(lambda: self.error_count > seen, timeout_s)
        return self.errors[-1]


def _raw_value(point: Point, key: str, text: str) -> Value:
    if point.type == "string":
        return text
    try:
        number = float(text)
    except ValueError:
        raise FieldError(key, f"{text!r} is not a number") from None
    if point.type == "bool":
        return number != 0
    if point.type.startswith(("int", "uint")):
        return round(number)
    return number


def _open_serial(settings: Hj212SerialSettings) -> FdLink:
    # resolved at every (re)connection: a USB adapter may come back under another name
    device = resolve_serial_port(port=settings.port).device
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise ConnectError(f"{settings.endpoint}: cannot open: {exc}") from exc
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        speed = _SPEEDS[settings.baudrate]
        attrs[4] = attrs[5] = speed  # ispeed, ospeed
        attrs[2] = (
            (attrs[2] & ~(termios.PARENB | termios.CSTOPB | termios.CSIZE))
            | termios.CS8
            | termios.CLOCAL
            | termios.CREAD
        )
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except (OSError, termios.error) as exc:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise ConnectError(f"{settings.endpoint}: cannot configure: {exc}") from exc
    return FdLink(fd, settings.endpoint)
