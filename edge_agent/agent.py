"""The edge agent: pollers, command executor and uplink wired together.

Stopping (``stop()``, which SIGINT and SIGTERM call, or cancelling ``run()``) is bounded by
``stop_timeout_s`` under any load: the pollers are cancelled first (no new readings), then the
uplink (it says goodbye with an offline state) and the health reporter, each cancelled again
if a library swallowed the cancellation (:mod:`edge_agent.cancellation`); then the spool
commits what is still in memory, the command journal closes and every driver closes. The agent
logs what it did (``agent stopped``: how long, readings kept in the spool for the next start,
drivers closed) and names any task that did not finish in time, at ERROR.
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

import structlog

from device_profiles import ProfileError
from device_profiles.wire import Channel, DesiredConfig, ReportedConfig
from drivers import DriverError
from edge_agent.cancellation import cancel_within, describe
from edge_agent.commands.executor import CommandExecutor
from edge_agent.commands.journal import CommandJournal
from edge_agent.health import HealthReporter
from edge_agent.nbiot.uplink import NbIotUplink, WakingOutbox
from edge_agent.outbox.spool import DiskOutbox
from edge_agent.polling.devices import DeviceRuntime
from edge_agent.polling.poller import DevicePoller
from edge_agent.remote_config import ConfigRejected, load_applied, parse_remote, store_applied
from edge_agent.settings import AgentSettings
from edge_agent.uplink import MqttUplink

__all__ = ["Agent", "software_version"]

log = structlog.get_logger(__name__)


def software_version() -> str:
    try:
        return version("citypulse-iot")
    except PackageNotFoundError:
        return "unknown"


#: How long a stop may take, whatever the load (a supervisor's stop timeout is usually longer).
STOP_TIMEOUT_S = 5.0


class Agent:
    """Run with ``await Agent(settings).run()``; ``stop()`` (or cancel the task) to stop."""

    def __init__(self, settings: AgentSettings, *, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.settings = settings
        self.stop_timeout_s = stop_timeout_s
        #: Tasks that did not finish within the stop's bound (empty after a clean stop).
        self.stragglers: set[asyncio.Task[object]] = set()
        self._stop = asyncio.Event()
        self._running = False
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
        self._config_lock = asyncio.Lock()

        self.health = HealthReporter(
            settings.agent_id, self.outbox, self.pollers, self.uplink, settings.health_interval_s
        )

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the running agent to stop; ``run()`` returns once it has (within the bound)."""
        self._stop.set()

    async def run(self) -> None:
        """Run until :meth:`stop` or cancellation, then stop within ``stop_timeout_s``.

        Raises what ended the uplink or the health reporter, should either fail.
        """
        log.info("agent starting", agent_id=self.settings.agent_id, devices=len(self.devices))
        # drivers connect on demand, so a device that is down at start-up delays nothing
        core: set[asyncio.Task[object]] = {
            asyncio.create_task(self.uplink.run(), name="uplink"),
            asyncio.create_task(self.health.run(), name="health"),
        }
        self._running = True
        for poller in self.pollers:
            self._start(poller)
        stop = asyncio.create_task(self._stop.wait(), name="agent-stop")
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait({stop, *core}, return_when=asyncio.FIRST_COMPLETED)
            for task in done - {stop}:  # the uplink or the health reporter ended: a failure
                failure = task.exception() if not task.cancelled() else None
                failure = failure or RuntimeError(f"{task.get_name()} ended unexpectedly")
                log.error("agent stopping after a failure", task=task.get_name(), exc_info=failure)
        finally:
            stop.cancel()
            await self._shutdown(core)
        if failure is not None:
            raise failure

    def _start(self, poller: DevicePoller) -> None:
        device_id = poller.device.device_id
        task = asyncio.create_task(poller.run(), name=f"poll-{device_id}")
        task.add_done_callback(_report_crash)
        self._poll_tasks[device_id] = task

    async def _shutdown(self, core: set[asyncio.Task[object]]) -> None:
        """Stop everything within ``stop_timeout_s``; log what was done."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.stop_timeout_s
        self._running = False
        log.info("agent stopping", timeout_s=self.stop_timeout_s)
        pollers: list[asyncio.Task[object]] = list(self._poll_tasks.values())
        stuck = await cancel_within(pollers, deadline - loop.time())  # no new readings
        stuck |= await cancel_within(core, max(0.0, deadline - loop.time()))
        spooled = self.outbox.depth
        try:
            self.outbox.close()  # commits the readings still in memory
        except Exception as exc:  # noqa: BLE001 - the drivers must still be closed
            log.error("spool not closed cleanly", error=f"{type(exc).__name__}: {exc}")
        self.journal.close()
        closers = [
            asyncio.create_task(device.driver.close(), name=f"close-{device_id}")
            for device_id, device in self.devices.items()
        ]
        if closers:
            _, late = await asyncio.wait(closers, timeout=max(0.1, deadline - loop.time()))
            stuck |= await cancel_within(late, 0.1)
        failed = [t.get_name() for t in closers if t.done() and not t.cancelled() and t.exception()]
        for task in stuck:
            log.error("task did not stop in time", task=describe(task))
        self.stragglers = stuck
        log.info(
            "agent stopped",
            stop_s=round(loop.time() - started, 3),
            readings_spooled=spooled,
            drivers_closed=len(closers) - len(failed),
            drivers_failed=failed,
            tasks_not_stopped=len(stuck),
        )

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
            if self._running:
                self._start(poller)
        store_applied(self.settings.data_dir, desired.version, remote)
        self.config_version = desired.version
        self.uplink.devices[:] = [d.info for d in self.devices.values()]
        self.uplink.announce()  # the hub learns the new device list from the birth message
        return f"{len(changed)} device(s) started or changed, {len(removed)} removed"

    async def _stop_device(self, device_id: str) -> None:
        task = self._poll_tasks.pop(device_id, None)
        if task is not None:
            for stuck in await cancel_within([task], self.stop_timeout_s):
                log.error("poller did not stop in time", task=describe(stuck))
        self.pollers[:] = [p for p in self.pollers if p.device.device_id != device_id]
        device = self.devices.pop(device_id)
        async with device.command_lock:  # let a running command finish
            await device.driver.close()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A poller isolates every device error; one that ends anyway is a bug: say so, once."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("poller ended unexpectedly", task=task.get_name(), exc_info=exc)
