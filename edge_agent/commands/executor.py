"""Executes commands from the hub, safely.

The agent is the last line of defence (Modbus has no authentication): a command is checked
against the device profile here again, written through the driver, read back and verified.
A momentary write (a trigger the device clears, so it cannot be read back) is verified by the
point its profile names in ``confirm`` (a gate's ``state``), read again until it shows one of
the expected values or ``within_s`` passed. Each command id runs at most once; an expired
command never runs. What a command read back is reported as telemetry at once. A command that fails in any
way (a driver error, or any other exception) gets a ``failed`` result; nothing it raises
reaches the uplink that delivered it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

from device_profiles import CommandRejected, Point, PointWrite, Value
from device_profiles.wire import Channel, CommandRequest, CommandResult, CommandStatus, Reading
from drivers import DriverError
from edge_agent.commands.journal import CommandJournal
from edge_agent.outbox.memory import OutboxLike
from edge_agent.polling.devices import DeviceRuntime

__all__ = ["CommandExecutor"]

log = structlog.get_logger(__name__)

_REMEMBERED = 10_000
#: how often a point confirming a momentary write is read again until it shows the effect
_CONFIRM_POLL_S = 0.1


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class CommandExecutor:
    def __init__(
        self,
        devices: dict[str, DeviceRuntime],
        outbox: OutboxLike,
        clock_ms: Callable[[], int] = _now_ms,
        journal: CommandJournal | None = None,
    ) -> None:
        self.devices = devices
        self.outbox = outbox
        self.clock_ms = clock_ms
        # command id -> final result, so a duplicate delivery re-reports instead of re-running;
        # with a journal on disk this holds across restarts
        self.journal = journal
        self._done: OrderedDict[str, CommandResult | None] = (
            journal.entries if journal is not None else OrderedDict()
        )
        self._running: set[str] = set()

    async def handle(self, request: CommandRequest) -> None:
        command_id = request.command_id
        if command_id in self._running:
            return
        if command_id in self._done:
            previous = self._done[command_id]
            if previous is None:  # started before a restart, never finished: never again
                previous = CommandResult(
                    command_id=command_id,
                    device_id=request.device_id,
                    status="failed",
                    detail="interrupted by an agent restart; not executed again",
                    ts=self.clock_ms(),
                )
                self._record(previous)
            log.info("duplicate command, reporting its result again", command_id=command_id)
            self.outbox.put_control(Channel.COMMAND_RESULTS, previous)
            return
        self._running.add(command_id)
        if self.journal is not None:
            self.journal.started(command_id)
        else:
            self._done[command_id] = None
        status: CommandStatus
        try:
            status, detail = await self._execute(request)
        except DriverError as exc:  # from a step outside the write and read-back
            status, detail = "failed", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug: fail this command, never the uplink that delivered it
            log.error("command failed unexpectedly", command_id=command_id, exc_info=exc)
            status, detail = "failed", f"unexpected error: {type(exc).__name__}: {exc}"
        finally:
            self._running.discard(command_id)
        result = CommandResult(
            command_id=command_id,
            device_id=request.device_id,
            status=status,
            detail=detail,
            ts=self.clock_ms(),
        )
        self._record(result)
        log.info("command finished", command_id=command_id, status=status, detail=detail)
        self.outbox.put_control(Channel.COMMAND_RESULTS, result)

    def _record(self, result: CommandResult) -> None:
        if self.journal is not None:
            self.journal.finished(result)
            return
        self._done[result.command_id] = result
        while len(self._done) > _REMEMBERED:
            self._done.popitem(last=False)

    async def _execute(self, request: CommandRequest) -> tuple[CommandStatus, str]:
        if request.expires_at is not None and self.clock_ms() >= request.expires_at:
            return "expired", "arrived after its expiry time; not executed"
        device = self.devices.get(request.device_id)
        if device is None:
            return "rejected", f"device '{request.device_id}' is not behind this agent"
        try:
            writes = device.profile.resolve_command(request.name, dict(request.params))
        except CommandRejected as exc:
            return "rejected", exc.reason
        if not device.allow_command(time.monotonic()):
            limit = device.config.commands_per_minute
            return "rejected", f"rate limited: at most {limit} commands a minute for this device"
        self._report(request, "delivered", "executing")
        async with device.command_lock:
            if request.expires_at is not None and self.clock_ms() >= request.expires_at:
                return "expired", "expired while waiting for the device; not executed"
            try:
                for write in writes:
                    await device.write_value(write.point, write.value)
                read_back = await device.read_values(_read_back(device, writes))
                await _await_confirmations(device, writes, read_back)
            except DriverError as exc:
                return "failed", f"{type(exc).__name__}: {exc}"
            read_at = self.clock_ms()
        # what the command did is reported now, changed or not, so every consumer of the
        # hub's latest values sees it (not only after the device's max_silent_s)
        reported = device.changes.report_now(read_back, read_at)
        if reported:
            self.outbox.put_reading(
                Reading(device_id=device.device_id, ts=read_at, values=reported)
            )
        points = device.profile.points
        verified = [w for w in writes if not points[w.point].momentary]
        mismatches = [
            f"{w.point} reads back {read_back.get(w.point)!r}, expected {w.value!r}"
            for w in verified
            if not _matches(points[w.point], w, read_back.get(w.point))
        ]
        mismatches += [
            f"{w.point}={w.value} not confirmed: {w.confirm.point} reads "
            f"{read_back.get(w.confirm.point)!r} after {w.confirm.within_s:g} s, expected "
            + " or ".join(map(repr, w.confirm.values))
            for w in writes
            if w.confirm is not None and not w.confirm.shown_by(read_back.get(w.confirm.point))
        ]
        if mismatches:
            return "failed", "; ".join(mismatches)
        done = ", ".join(_done(w, points[w.point], read_back) for w in writes)
        checked = verified or any(w.confirm is not None for w in writes)
        return "succeeded", f"wrote and verified {done}" if checked else f"wrote {done}"

    def _report(self, request: CommandRequest, status: CommandStatus, detail: str) -> None:
        self.outbox.put_control(
            Channel.COMMAND_RESULTS,
            CommandResult(
                command_id=request.command_id,
                device_id=request.device_id,
                status=status,
                detail=detail,
                ts=self.clock_ms(),
            ),
        )


def _read_back(device: DeviceRuntime, writes: list[PointWrite]) -> list[str]:
    """The points to read after ``writes``: each written point except momentary ones (the
    device clears those), which are represented by the point confirming them, if any."""
    names: list[str] = []
    for write in writes:
        if not device.profile.points[write.point].momentary:
            name = write.point
        elif write.confirm is not None:
            name = write.confirm.point
        else:
            continue
        if name not in names:
            names.append(name)
    return names


async def _await_confirmations(
    device: DeviceRuntime, writes: list[PointWrite], read_back: dict[str, Value]
) -> None:
    """Read the points confirming momentary writes again (into ``read_back``) until each
    shows an expected value or its ``within_s`` passed: a device takes a moment to act."""
    pending = [w.confirm for w in writes if w.confirm is not None]
    if not pending:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(c.within_s for c in pending)
    while True:
        unseen = [c for c in pending if not c.shown_by(read_back.get(c.point))]
        if not unseen or loop.time() >= deadline:
            return
        await asyncio.sleep(_CONFIRM_POLL_S)  # a Modbus device has no event to wait on
        read_back.update(await device.read_values(list(dict.fromkeys(c.point for c in unseen))))


def _done(write: PointWrite, point: Point, read_back: dict[str, Value]) -> str:
    if not point.momentary:
        return f"{write.point}={write.value}"
    if write.confirm is None:
        return f"{write.point}={write.value} (momentary, not read back)"
    shown = write.confirm.point
    return f"{write.point}={write.value} (momentary, confirmed by {shown}={read_back.get(shown)!r})"


def _matches(point: Point, write: PointWrite, actual: Value | None) -> bool:
    if actual is None:
        return False
    if not point.is_numeric:
        return actual == write.value
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return False
    assert isinstance(write.value, int | float)  # resolve_command checked the type
    # the register holds the value rounded to the point's resolution
    return math.isclose(actual, write.value, abs_tol=abs(point.scale) / 2 + 1e-9)
