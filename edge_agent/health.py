"""The agent's periodic health report: CPU, memory, buffer, per-device polling statistics,
and an NB-IoT agent's modem figures (its uplink's ``modem_health``)."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from device_profiles.wire import AgentHealth, Channel, DeviceHealth, ModemHealth
from edge_agent.cancellation import raise_if_cancelling
from edge_agent.outbox.memory import OutboxLike
from edge_agent.polling.poller import DevicePoller

__all__ = ["HealthReporter", "rss_bytes"]


class _Uplink(Protocol):
    connects: int


@runtime_checkable
class _ModemUplink(Protocol):
    """An uplink through a modem (NB-IoT): what the modem said when last asked."""

    modem_health: ModemHealth | None


def rss_bytes() -> int:
    """Resident memory now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class HealthReporter:
    def __init__(
        self,
        agent_id: str,
        outbox: OutboxLike,
        pollers: Sequence[DevicePoller],
        uplink: _Uplink,
        interval_s: float,
    ) -> None:
        self.agent_id = agent_id
        self.outbox = outbox
        self.pollers = pollers
        self.uplink = uplink
        self.interval_s = interval_s
        self.started = time.monotonic()

    def snapshot(self) -> AgentHealth:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return AgentHealth(
            agent_id=self.agent_id,
            ts=time.time_ns() // 1_000_000,
            uptime_s=round(time.monotonic() - self.started, 3),
            cpu_seconds=round(usage.ru_utime + usage.ru_stime, 3),
            rss_bytes=rss_bytes(),
            buffer_readings=self.outbox.depth,
            buffer_bytes=getattr(self.outbox, "bytes_used", 0),
            dropped_readings=self.outbox.dropped_readings,
            uplink_connects=self.uplink.connects,
            unconfirmed_batches=self.outbox.unconfirmed_batches,
            resent_batches=self.outbox.resent_batches,
            devices={
                p.device.device_id: DeviceHealth(
                    online=p.online,
                    polls=p.polls,
                    errors=p.errors,
                    last_latency_ms=round(p.last_latency_ms, 3),
                )
                for p in self.pollers
            },
            modem=self.uplink.modem_health if isinstance(self.uplink, _ModemUplink) else None,
        )

    async def run(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self.interval_s)
            self.outbox.put_control(Channel.HEALTH, self.snapshot())
