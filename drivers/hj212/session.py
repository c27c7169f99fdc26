"""An HJ 212 conversation over a byte stream: framing, split packets, answers, retries.

* :class:`FrameReassembler` (no I/O) cuts frames out of a byte stream. It resynchronises on
  the next ``##`` after garbage or a broken frame, and reports what it skipped as typed
  :class:`~drivers.hj212.codec.FrameError` values instead of raising, so one bad frame never
  stops the stream. A frame ends at its first CR LF (the data segment is printable ASCII);
  the length field is then checked against what arrived.
* :class:`Hj212Session` runs the protocol over a :class:`ByteLink` (TCP streams, or a serial
  line / pseudo-terminal through :class:`FdLink`): it reassembles split packets by
  PNUM/PNO, answers uploads that ask for it with 9014 (``auto_ack``), routes answers (9011,
  9012, 9014 and data carrying a request's QN) to whoever waits for that QN, and hands
  every other frame to its ``handler``. :meth:`Hj212Session.send` waits for the 9014 when
  the frame's Flag asks for one, re-sending after ``timeout_s`` up to ``retries`` times;
  :meth:`Hj212Session.request` does the request / 9011 / data / 9012 exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

import structlog

from drivers.errors import ConnectError
from drivers.hj212.codec import (
    MAX_SEGMENT,
    VERSION_2017,
    AckTimeout,
    CommandRefused,
    CpData,
    FieldError,
    Frame,
    FrameError,
    GarbageError,
    decode_frame,
    encode_frame,
    format_qn,
    join_packets,
    parse_qn,
    split_frame,
)
from drivers.hj212.messages import (
    ExecutionResult,
    GetRtdInterval,
    GetTime,
    HistoryRequest,
    Message,
    OtherMessage,
    RequestAnswer,
    SetRtdInterval,
    SetTime,
    parse_message,
)

__all__ = [
    "MAX_FRAME",
    "ByteLink",
    "FdLink",
    "FrameHandler",
    "FrameReassembler",
    "Hj212Session",
    "StreamLink",
    "is_request",
]

log = structlog.get_logger(__name__)

#: Longest possible frame: ``##`` + 4 digits + 9999 bytes + CRC + CRLF.
MAX_FRAME = 2 + 4 + 9999 + 4 + 2
_ANSWER_CNS = ("9011", "9012", "9013", "9014")
_SYSTEM_ST = "91"  # system interaction (answers)
_MAX_PARTIAL = 16  # split messages kept waiting for their missing packets

FrameHandler = Callable[[Frame], Awaitable[None] | None]


class FrameReassembler:
    """Cut frames out of a byte stream; ``feed`` returns frames and the errors met."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        buf = self._buffer
        buf += data
        out: list[Frame | FrameError] = []
        while buf:
            start = buf.find(b"##")
            if start == -1:
                # keep a trailing '#', it may be the first half of the next '##'
                keep = 1 if buf.endswith(b"#") else 0
                if len(buf) - keep > 0:
                    out.append(GarbageError(len(buf) - keep, bytes(buf[: len(buf) - keep])))
                    del buf[: len(buf) - keep]
                break
            if start > 0:
                out.append(GarbageError(start, bytes(buf[:start])))
                del buf[:start]
            end = buf.find(b"\r\n", 2)
            if end == -1:
                if len(buf) >= MAX_FRAME:
                    out.append(FrameError(f"no CR LF within {MAX_FRAME} bytes of '##'"))
                    del buf[:2]
                    continue
                break
            candidate = bytes(buf[: end + 2])
            try:
                out.append(decode_frame(candidate))
            except FrameError as exc:
                inner = candidate.find(b"##", 2)
                if inner != -1:
                    out.append(GarbageError(inner, candidate[:inner]))
                    del buf[:inner]
                    continue
                out.append(exc)
            del buf[: end + 2]
        return out


# -- links ------------------------------------------------------------------------------


class ByteLink(Protocol):
    """Where a session reads and writes bytes."""

    async def read(self) -> bytes:
        """Some bytes; ``b""`` at end of stream."""

    async def write(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...

    @property
    def name(self) -> str: ...


class StreamLink:
    """A TCP connection (asyncio streams)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        self._name = f"tcp://{peer[0]}:{peer[1]}" if peer else "tcp"

    @property
    def name(self) -> str:
        return self._name

    async def read(self) -> bytes:
        try:
            return await self._reader.read(4096)
        except OSError as exc:
            raise ConnectError(f"{self._name}: {exc}") from exc

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except OSError as exc:
            raise ConnectError(f"{self._name}: {exc}") from exc

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class FdLink:
    """A non-blocking file descriptor (serial port, pseudo-terminal) on the event loop.

    Reads come from ``loop.add_reader``; a write that would block waits for
    ``loop.add_writer``. ``EIO`` (the other side of a pty closed) reads as end of stream.
    The link owns the fd and closes it in :meth:`aclose` when ``owns_fd``.
    """

    def __init__(self, fd: int, name: str, *, owns_fd: bool = True) -> None:
        self._fd = fd
        self._name = name
        self._owns_fd = owns_fd
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._eof = False
        self._closed = False
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._on_readable)

    @property
    def name(self) -> str:
        return self._name

    @property
    def fd(self) -> int:
        return self._fd

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                log.warning("fd read failed", link=self._name, error=str(exc))
            data = b""
        if not data:
            self._eof = True
            self._loop.remove_reader(self._fd)
        else:
            self._chunks.append(data)
        self._readable.set()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._eof or self._closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        return self._chunks.popleft()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise ConnectError(f"{self._name}: closed")
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError as exc:
                raise ConnectError(f"{self._name}: {exc}") from exc
            view = view[written:]

    async def _writable(self) -> None:
        ready = self._loop.create_future()
        self._loop.add_writer(self._fd, _resolve, ready)
        try:
            await ready
        finally:
            self._loop.remove_writer(self._fd)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._readable.set()
        if self._owns_fd:
            os.close(self._fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def is_request(message: Message) -> bool:
    """True for a request the receiver answers with 9011 (not with 9014)."""
    if isinstance(message, HistoryRequest | GetTime | SetTime | SetRtdInterval):
        return True
    if isinstance(message, GetRtdInterval):
        return message.interval_s is None
    return isinstance(message, OtherMessage) and message.cn[0] in "13"


class Hj212Session:
    """The protocol over one link. Use as ``async with Hj212Session(link, ...) as s:``."""

    def __init__(
        self,
        link: ByteLink,
        *,
        handler: FrameHandler | None = None,
        timeout_s: float = 5.0,
        retries: int = 3,
        auto_ack: bool = True,
        max_segment: int = MAX_SEGMENT,
        clock: Callable[[], datetime] = datetime.now,
        history: int = 1000,
        listener: Callable[[], None] | None = None,
    ) -> None:
        self.link = link
        self.handler = handler
        self.timeout_s = timeout_s
        self.retries = retries
        #: Answer uploads that ask for it (Flag bit A) with 9014.
        self.auto_ack = auto_ack
        self.max_segment = max_segment
        self.clock = clock
        #: What went over the link, newest last.
        self.sent: deque[Frame] = deque(maxlen=history)
        self.received: deque[Frame] = deque(maxlen=history)
        self.errors: deque[FrameError] = deque(maxlen=history)
        self.error_count = 0
        self.received_count = 0
        self._waiters: dict[str, asyncio.Queue[Frame]] = {}
        self._split: dict[tuple[str | None, str, str], dict[int, Frame]] = {}
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._last_qn = ""
        self.closed = asyncio.Event()
        #: Applied to each encoded packet before it is written (fault injection).
        self.outgoing_filter: Callable[[bytes], bytes] | None = None
        #: Called after each chunk of bytes is processed (frames or errors) and at the end.
        self.listener = listener

    @property
    def name(self) -> str:
        return self.link.name

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name=f"hj212 read {self.name}")

    async def aclose(self) -> None:
        tasks = [t for t in (self._reader, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks.clear()
        await self.link.aclose()
        self.closed.set()

    # -- sending --------------------------------------------------------------------------

    def new_qn(self) -> str:
        """A fresh QN from the clock, unique within this session."""
        qn = format_qn(self.clock())
        if qn <= self._last_qn:
            qn = format_qn(parse_qn(self._last_qn) + timedelta(milliseconds=1))
        self._last_qn = qn
        return qn

    async def write_raw(self, data: bytes) -> None:
        """Put bytes on the link as they are (fault injection, tests)."""
        async with self._write_lock:
            await self.link.write(data)

    async def write_frame(self, frame: Frame) -> None:
        """Send one frame (split if too long) without waiting for any answer."""
        for packet in split_frame(frame, self.max_segment):
            data = encode_frame(packet)
            if self.outgoing_filter is not None:
                data = self.outgoing_filter(data)
            await self.write_raw(data)
            self.sent.append(packet)
            log.debug("hj212 sent", link=self.name, cn=packet.cn, qn=packet.qn, pno=packet.pno)

    async def send(self, frame: Frame) -> None:
        """Send a frame; if its Flag asks for an answer, wait for 9014 (re-send on timeout).

        :class:`AckTimeout` after ``retries`` re-sends without an answer.
        """
        if frame.qn is None:
            frame = replace(frame, qn=self.new_qn())
        assert frame.qn is not None
        if not frame.ack_requested:
            await self.write_frame(frame)
            return
        with self._waiting(frame.qn) as answers:
            for packet in split_frame(frame, self.max_segment):
                await self._send_until_answered(packet, answers, ("9014",))

    async def request(self, frame: Frame) -> list[Frame]:
        """Send a request and return the data frames of its answer.

        The exchange: request (Flag A set) -> 9011 QnRtn (re-sent on timeout) -> data
        frames with the same QN -> 9012 ExeRtn. :class:`CommandRefused` for QnRtn != 1 or
        an ExeRtn other than 1 (success) and 100 (no data); :class:`AckTimeout` when an
        answer does not come.
        """
        frame = replace(frame, qn=frame.qn or self.new_qn()).with_flag(ack=True)
        assert frame.qn is not None
        data: list[Frame] = []
        with self._waiting(frame.qn) as answers:
            answer = await self._send_until_answered(frame, answers, ("9011",))
            qn_rtn = parse_message(answer)
            assert isinstance(qn_rtn, RequestAnswer)
            if not qn_rtn.ok:
                raise CommandRefused(frame.cn, "QnRtn", qn_rtn.code, qn_rtn.meaning)
            while True:
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
                    async with asyncio.timeout(self.timeout_s):
                        reply = await answers.get()
                except TimeoutError:
                    raise AckTimeout(
                        f"CN={frame.cn} QN={frame.qn}: no 9012 within {self.timeout_s} s"
                    ) from None
                if reply.cn == "9012":
                    result = parse_message(reply)
                    assert isinstance(result, ExecutionResult)
                    if result.code not in (1, 100):
                        raise CommandRefused(frame.cn, "ExeRtn", result.code, result.meaning)
                    return data
                if reply.cn not in _ANSWER_CNS:
                    data.append(reply)

    async def answer(self, request: Frame, cn: str, cp: CpData | None = None) -> None:
        """Send an answer frame (9011/9012/9013/9014) to ``request``: same QN, PW, MN."""
        await self.write_frame(
            Frame(
                qn=request.qn,
                st=_SYSTEM_ST,
                cn=cn,
                pw=request.pw,
                mn=request.mn,
                flag=VERSION_2017 << 2,
                cp=cp or CpData(),
            )
        )

    async def _send_until_answered(
        self, frame: Frame, answers: asyncio.Queue[Frame], cns: tuple[str, ...]
    ) -> Frame:
        for attempt in range(self.retries + 1):
            await self.write_frame(frame)
            deadline = asyncio.get_running_loop().time() + self.timeout_s
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        reply = await answers.get()
                except TimeoutError:
                    break
                if reply.cn in cns:
                    return reply
            log.info(
                "hj212 no answer", link=self.name, cn=frame.cn, qn=frame.qn, attempt=attempt + 1
            )
        raise AckTimeout(
            f"CN={frame.cn} QN={frame.qn}: no {'/'.join(cns)} after {self.retries + 1} "
            f"attempt(s) of {self.timeout_s} s"
        )

    @contextlib.contextmanager
    def _waiting(self, qn: str) -> Iterator[asyncio.Queue[Frame]]:
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._waiters[qn] = queue
        try:
            yield queue
        finally:
            self._waiters.pop(qn, None)

    # -- receiving ------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait until ``predicate()`` holds (checked after each frame or error received)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        if self.listener is not None:
            self.listener()
        async with self._changed:
            self._changed.notify_all()

    async def _read_loop(self) -> None:
        reassembler = FrameReassembler()
        try:
            while True:
                data = await self.link.read()
                if not data:
                    break
                for item in reassembler.feed(data):
                    if isinstance(item, FrameError):
                        self._on_error(item)
                    else:
                        await self._on_frame(item)
                await self._notify()
        except ConnectError as exc:
            log.info("hj212 link lost", link=self.name, error=str(exc))
        finally:
            self.closed.set()
            await self._notify()

    def _on_error(self, error: FrameError) -> None:
        self.errors.append(error)
        self.error_count += 1
        log.warning("hj212 bad frame", link=self.name, reason=error.reason)

    async def _on_frame(self, frame: Frame) -> None:
        self.received.append(frame)
        self.received_count += 1
        log.debug("hj212 received", link=self.name, cn=frame.cn, qn=frame.qn, pno=frame.pno)
        if frame.is_split:
            joined = self._join(frame)
            if joined is None:
                if frame.ack_requested and self.auto_ack and frame.cn not in _ANSWER_CNS:
                    await self.answer(frame, "9014")
                return
            frame = joined  # the last packet is answered after the handler, below
        try:
            message = parse_message(frame)
        except FieldError as exc:
            self._on_error(exc)
            return
        need_ack = (
            frame.ack_requested
            and self.auto_ack
            and frame.cn not in _ANSWER_CNS
            and not is_request(message)
        )
        waiter = self._waiters.get(frame.qn) if frame.qn is not None else None
        if waiter is not None and (frame.cn in _ANSWER_CNS or not is_request(message)):
            waiter.put_nowait(frame)
        elif frame.cn in _ANSWER_CNS:
            log.debug("hj212 unexpected answer", link=self.name, cn=frame.cn, qn=frame.qn)
        elif self.handler is not None:
            # the handler runs before the 9014 goes out, so a sender that got its answer
            # can rely on the frame having been taken into account
            result = self.handler(frame)
            if result is not None:
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        if need_ack:
            await self.answer(frame, "9014")

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("hj212 handler failed", link=self.name, error=repr(task.exception()))

    def _join(self, packet: Frame) -> Frame | None:
        assert packet.pnum is not None
        assert packet.pno is not None
        key = (packet.qn, packet.cn, packet.mn)
        if key not in self._split and len(self._split) >= _MAX_PARTIAL:
            dropped = next(iter(self._split))  # the oldest message still missing packets
            del self._split[dropped]
            self._on_error(FrameError(f"split message QN={dropped[0]} never completed"))
        parts = self._split.setdefault(key, {})
        parts[packet.pno] = packet
        if len(parts) < packet.pnum:
            return None
        del self._split[key]
        return join_packets([parts[n] for n in sorted(parts)])
