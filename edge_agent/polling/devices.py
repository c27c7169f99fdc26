"""A device behind the agent at run time: its config, its profile and its driver."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from device_profiles import DeviceProfile, Value, resolve_profile
from device_profiles.wire import DeviceInfo
from drivers import Driver, open_driver
from edge_agent.polling.reporting import ChangeFilter
from edge_agent.settings import DeviceConfig

__all__ = ["DeviceRuntime"]


@dataclass
class DeviceRuntime:
    config: DeviceConfig
    profile: DeviceProfile
    driver: Driver
    #: serialises command execution on this device (the driver serialises bus access)
    command_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: monotonic times of the commands executed in the last minute (the rate limit)
    recent_commands: deque[float] = field(default_factory=deque)
    #: what was last reported of each point (shared by the poller and the command executor)
    changes: ChangeFilter = field(init=False)

    def __post_init__(self) -> None:
        self.changes = ChangeFilter(
            self.profile, self.config.max_silent_s, enabled=self.config.report_on_change
        )

    def allow_command(self, now: float) -> bool:
        """Count a command against the device's per-minute limit; False when over it."""
        while self.recent_commands and now - self.recent_commands[0] >= 60.0:
            self.recent_commands.popleft()
        if len(self.recent_commands) >= self.config.commands_per_minute:
            return False
        self.recent_commands.append(now)
        return True

    @classmethod
    def from_config(cls, config: DeviceConfig) -> DeviceRuntime:
        profile = resolve_profile(config.profile)
        return cls(config, profile, open_driver(profile, config.connection))

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def info(self) -> DeviceInfo:
        return DeviceInfo(
            device_id=self.device_id,
            profile=self.profile.name,
            reading_interval_s=self.reading_interval_s,
        )

    def poll_intervals(self) -> dict[str, float]:
        """Each point's poll interval: the profile's, unless the config overrides them all."""
        override = self.config.poll_interval_s
        return {
            name: override if override is not None else self.profile.poll_interval(name)
            for name in self.profile.points
        }

    @property
    def reading_interval_s(self) -> float:
        """The poll plan's promise: a reading at least this often (the shortest poll interval;
        on change, at the latest after ``max_silent_s``)."""
        shortest = min(self.poll_intervals().values(), default=self.profile.default_poll_interval_s)
        if self.config.report_on_change:
            return max(shortest, self.config.max_silent_s)
        return shortest

    async def read_values(self, names: list[str]) -> dict[str, Value]:
        """Engineering values of ``names`` (scale and offset applied here, not in drivers)."""
        raw = await self.driver.read(names)
        points = self.profile.points
        return {name: points[name].from_raw(value) for name, value in raw.items()}

    async def write_value(self, name: str, value: Value) -> None:
        await self.driver.write(name, self.profile.points[name].to_raw(value))
