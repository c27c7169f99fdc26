"""The edge agent: pollers, command executor and uplink wired together."""

from __future__ import annotations

import asyncio
import contextlib
from importlib.metadata import PackageNotFoundError, version

import structlog

from edge_agent.commands import CommandExecutor
from edge_agent.devices import DeviceRuntime
from edge_agent.health import HealthReporter
from edge_agent.poller import DevicePoller
from edge_agent.settings import AgentSettings
from edge_agent.spool import DiskOutbox
from edge_agent.uplink import MqttUplink

__all__ = ["Agent", "software_version"]

log = structlog.get_logger(__name__)


def software_version() -> str:
    try:
        return version("citypulse-iot")
    except PackageNotFoundError:
        return "unknown"


class Agent:
    """Run with ``await Agent(settings).run()``; cancel the task to stop."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.devices = {d.device_id: DeviceRuntime.from_config(d) for d in settings.devices}
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        buffer = settings.buffer
        self.outbox = DiskOutbox.open(
            settings.data_dir / "outbox.sqlite3",
            settings.agent_id,
            max_bytes=buffer.max_bytes,
            batch_max_readings=settings.batch_max_readings,
            batch_max_delay_s=settings.batch_max_delay_s,
            flush_interval_s=buffer.flush_interval_s,
            flush_max_readings=buffer.flush_max_readings,
            synchronous=buffer.synchronous,
        )
        self.pollers = [DevicePoller(device, self.outbox) for device in self.devices.values()]
        self.executor = CommandExecutor(self.devices, self.outbox)
        self.uplink = MqttUplink(
            settings.agent_id,
            settings.mqtt,
            self.outbox,
            [device.info for device in self.devices.values()],
            self.executor.handle,
            software_version=software_version(),
        )

        self.health = HealthReporter(
            settings.agent_id, self.outbox, self.pollers, self.uplink, settings.health_interval_s
        )

    async def run(self) -> None:
        log.info("agent starting", agent_id=self.settings.agent_id, devices=len(self.devices))
        async with contextlib.AsyncExitStack() as stack:
            # drivers connect on demand, so a device that is down at start-up delays nothing
            for device in self.devices.values():
                stack.push_async_callback(device.driver.close)
            stack.callback(self.outbox.close)  # commits the last readings
            async with asyncio.TaskGroup() as group:
                group.create_task(self.uplink.run(), name="uplink")
                group.create_task(self.health.run(), name="health")
                for poller in self.pollers:
                    group.create_task(poller.run(), name=f"poll-{poller.device.device_id}")
