"""The edge agent: pollers, command executor and uplink wired together."""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

import structlog

from device_profiles import ProfileError
from device_profiles.wire import Channel, DesiredConfig, ReportedConfig
from drivers import DriverError
from edge_agent.command_journal import CommandJournal
from edge_agent.commands import CommandExecutor
from edge_agent.devices import DeviceRuntime
from edge_agent.health import HealthReporter
from edge_agent.nbiot_uplink import NbIotUplink, WakingOutbox
from edge_agent.poller import DevicePoller
from edge_agent.remote_config import ConfigRejected, load_applied, parse_remote, store_applied
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
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        applied = load_applied(settings.data_dir)
        self.config_version = applied[0] if applied else 0
        configs = applied[1].devices if applied else settings.devices
        self.devices = {d.device_id: DeviceRuntime.from_config(d) for d in configs}
        buffer = settings.buffer
        spool = DiskOutbox.open(
            settings.data_dir / "outbox.sqlite3",
            settings.agent_id,
            max_bytes=buffer.max_bytes,
            batch_max_readings=settings.batch_max_readings,
            batch_max_delay_s=settings.batch_max_delay_s,
            flush_interval_s=buffer.flush_interval_s,
            flush_max_readings=buffer.flush_max_readings,
            synchronous=buffer.synchronous,
            window_batches=settings.delivery.window_batches,
            ack_timeout_s=settings.delivery.ack_timeout_s,
            ack_timeout_max_s=settings.delivery.ack_timeout_max_s,
        )
        # an NB-IoT uplink sleeps between cycles: urgent messages (results, events) wake it
        self.outbox: DiskOutbox | WakingOutbox = (
            WakingOutbox(spool) if settings.nbiot is not None else spool
        )
        self.pollers = [DevicePoller(device, self.outbox) for device in self.devices.values()]
        self.journal = CommandJournal(settings.data_dir / "commands.jsonl")
        self.executor = CommandExecutor(self.devices, self.outbox, journal=self.journal)
        devices = [device.info for device in self.devices.values()]
        self.uplink: MqttUplink | NbIotUplink
        if settings.nbiot is not None:
            assert isinstance(self.outbox, WakingOutbox)
            self.uplink = NbIotUplink(
                settings.agent_id,
                settings.nbiot,
                self.outbox,
                devices,
                self.executor.handle,
                software_version=software_version(),
                wake=self.outbox.urgent,
                on_config=self.apply_config,
            )
        else:
            self.uplink = MqttUplink(
                settings.agent_id,
                settings.mqtt,
                self.outbox,
                devices,
                self.executor.handle,
                software_version=software_version(),
                on_config=self.apply_config,
                confirm=settings.delivery.confirm,
            )
        self._poll_tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._config_lock = asyncio.Lock()

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
            stack.callback(self.journal.close)
            stack.push_async_callback(self._close_drivers)
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self.uplink.run(), name="uplink")
                group.create_task(self.health.run(), name="health")
                for poller in self.pollers:
                    self._start(poller)

    def _start(self, poller: DevicePoller) -> None:
        assert self._group is not None  # only called while running
        device_id = poller.device.device_id
        self._poll_tasks[device_id] = self._group.create_task(
            poller.run(), name=f"poll-{device_id}"
        )

    async def _close_drivers(self) -> None:
        for device in self.devices.values():
            await device.driver.close()

    async def apply_config(self, desired: DesiredConfig) -> ReportedConfig:
        """Validate and apply a configuration pushed by the hub; never raises."""
        async with self._config_lock:
            try:
                detail = await self._apply(desired)
                status: Literal["applied", "rejected"] = "applied"
            except ConfigRejected as exc:
                status, detail = "rejected", str(exc)
            log.info("desired configuration", version=desired.version, status=status, detail=detail)
            report = ReportedConfig(
                agent_id=self.settings.agent_id,
                version=desired.version,
                status=status,
                detail=detail,
                ts=time.time_ns() // 1_000_000,
            )
            self.outbox.put_control(Channel.CONFIG_REPORTED, report)
            return report

    async def _apply(self, desired: DesiredConfig) -> str:
        if desired.agent_id != self.settings.agent_id:
            raise ConfigRejected(f"configuration is for agent {desired.agent_id!r}")
        if desired.version <= self.config_version:
            if desired.version == self.config_version:
                return f"version {desired.version} is already applied"
            raise ConfigRejected(
                f"version {desired.version} is older than the applied {self.config_version}"
            )
        remote = parse_remote(desired.config)
        wanted = {d.device_id: d for d in remote.devices}
        changed = [
            i for i, d in wanted.items() if i not in self.devices or self.devices[i].config != d
        ]
        removed = [i for i in self.devices if i not in wanted]
        # build everything first: a bad profile or connection rejects the whole configuration
        fresh: dict[str, DeviceRuntime] = {}
        for device_id in changed:
            try:
                fresh[device_id] = DeviceRuntime.from_config(wanted[device_id])
            except (ProfileError, DriverError) as exc:
                raise ConfigRejected(f"devices: {device_id}: {exc}") from exc
        for device_id in [*removed, *[i for i in changed if i in self.devices]]:
            await self._stop_device(device_id)
        for device_id, runtime in fresh.items():
            self.devices[device_id] = runtime
            poller = DevicePoller(runtime, self.outbox)
            self.pollers.append(poller)
            if self._group is not None:
                self._start(poller)
        store_applied(self.settings.data_dir, desired.version, remote)
        self.config_version = desired.version
        self.uplink.devices[:] = [d.info for d in self.devices.values()]
        self.uplink.announce()  # the hub learns the new device list from the birth message
        return f"{len(changed)} device(s) started or changed, {len(removed)} removed"

    async def _stop_device(self, device_id: str) -> None:
        task = self._poll_tasks.pop(device_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.pollers[:] = [p for p in self.pollers if p.device.device_id != device_id]
        device = self.devices.pop(device_id)
        async with device.command_lock:  # let a running command finish
            await device.driver.close()
