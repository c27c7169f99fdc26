"""Polls one device on the intervals its profile (or its config) declares.

A device that fails is retried with capped exponential backoff without delaying any other
device; it going unavailable is logged once at WARNING (then at DEBUG) and reported as an
event, and so is its return.

A failure of any kind is the device's alone: a :class:`~drivers.DriverError` (which is all a
driver raises) or any other exception on the way from the driver to the outbox (a scaling bug,
a value the profile cannot convert) marks the device unavailable and is counted; it never ends
the poller, so it never stops the other devices or the uplink. An exception that is not a
DriverError is logged with its traceback at ERROR, once per outage.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import structlog

from device_profiles import Value
from device_profiles.wire import Channel, DeviceEvent, Reading
from drivers import DriverError
from edge_agent.cancellation import raise_if_cancelling
from edge_agent.outbox.memory import OutboxLike
from edge_agent.polling.devices import DeviceRuntime

__all__ = ["DevicePoller"]

log = structlog.get_logger(__name__)

BACKOFF_MAX_S = 60.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class DevicePoller:
    def __init__(
        self, device: DeviceRuntime, outbox: OutboxLike, clock_ms: Callable[[], int] = _now_ms
    ) -> None:
        self.device = device
        self.outbox = outbox
        self.clock_ms = clock_ms
        self.online: bool | None = None
        self.polls = 0
        self.errors = 0
        self.last_latency_ms = 0.0
        #: points whose value was NaN or infinite (not reported), and how many such values
        self.non_finite: set[str] = set()
        self.non_finite_values = 0
        self.changes = device.changes
        self.intervals = device.poll_intervals()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_due = dict.fromkeys(self.intervals, loop.time())
        failures = 0
        while True:
            raise_if_cancelling()  # a stop a library swallowed (see edge_agent.cancellation)
            now = loop.time()
            due = [name for name, at in next_due.items() if at <= now]
            if due:
                ok = await self._poll(due)
                failures = 0 if ok else failures + 1
                for name in due:
                    # keep the cadence; after a long stall, start again from now
                    nxt = next_due[name] + self.intervals[name]
                    next_due[name] = nxt if nxt > now else now + self.intervals[name]
                if failures:
                    backoff = min(BACKOFF_MAX_S, min(self.intervals.values()) * 2 ** (failures - 1))
                    next_due = {name: max(at, now + backoff) for name, at in next_due.items()}
            await asyncio.sleep(max(0.0, min(next_due.values()) - loop.time()))

    async def _poll(self, names: list[str]) -> bool:
        device_id = self.device.device_id
        read_at = self.clock_ms()
        started = time.monotonic()
        try:
            values = await self.device.read_values(names)
        except DriverError as exc:
            self._unavailable(str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - a bug, isolated to this device
            self._unavailable(f"{type(exc).__name__}: {exc}", unexpected=exc)
            return False
        self.polls += 1
        self.last_latency_ms = (time.monotonic() - started) * 1000
        if self.online is not True:
            if self.online is False:
                log.info("device available again", device_id=device_id)
            self._event("online", "")
            self.online = True
        values = self._finite(values)
        report = self.changes.select(values, read_at)
        if report:
            self.outbox.put_reading(Reading(device_id=device_id, ts=read_at, values=report))
        return True

    def _finite(self, values: dict[str, Value]) -> dict[str, Value]:
        """``values`` without NaN or infinite numbers (a float register's "no value", or an
        overflow of scale and offset), which no store can keep; each point said once."""
        bad = [n for n, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
        if not bad:
            return values
        for name in bad:
            if name not in self.non_finite:
                log.warning(
                    "device value is not a finite number; not reported",
                    device_id=self.device.device_id,
                    point=name,
                    value=str(values[name]),
                )
        self.non_finite.update(bad)
        self.non_finite_values += len(bad)
        return {n: v for n, v in values.items() if n not in bad}

    def _unavailable(self, detail: str, unexpected: Exception | None = None) -> None:
        device_id = self.device.device_id
        self.errors += 1
        if self.online is not False:
            if unexpected is None:
                log.warning("device unavailable", device_id=device_id, error=detail)
            else:
                log.error(
                    "device unavailable: unexpected error",
                    device_id=device_id,
                    error=detail,
                    exc_info=unexpected,
                )
            self._event("offline", detail)
        else:
            log.debug("device still unavailable", device_id=device_id, error=detail)
        self.online = False

    def _event(self, kind: str, detail: str) -> None:
        event = DeviceEvent.model_validate(
            {
                "agent_id": self.outbox.agent_id,
                "device_id": self.device.device_id,
                "ts": self.clock_ms(),
                "kind": kind,
                "detail": detail,
            }
        )
        self.outbox.put_control(Channel.EVENTS, event)
