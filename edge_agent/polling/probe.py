"""``edge-agent check``'s probe: read every point of every configured device once.

A device that fails (any driver error) is reported with why; the others are still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from device_profiles import DeviceProfile, Value, resolve_profile
from device_profiles.display import ShownValue, show_values
from drivers import DriverError
from edge_agent.polling.devices import DeviceRuntime
from edge_agent.settings import AgentSettings, DeviceConfig

__all__ = ["DeviceProbe", "probe_devices"]


@dataclass(frozen=True)
class DeviceProbe:
    """What reading one device once gave: its values, or the error that stopped it."""

    config: DeviceConfig
    profile: DeviceProfile
    values: dict[str, Value] = field(default_factory=dict)
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def connection(self) -> dict[str, Any]:
        return self.config.connection.model_dump(mode="json", exclude={"transport"})

    def shown(self) -> list[ShownValue]:
        """Every value read, for people: in profile order, rounded, with units and labels."""
        return show_values(self.profile, self.values)

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` document of this device: values as read beside their text."""
        return {
            "device_id": self.config.device_id,
            "profile": self.profile.name,
            "transport": self.config.connection.transport,
            "connection": self.connection,
            "ok": self.ok,
            "error": None
            if self.error is None
            else {"type": type(self.error).__name__, "message": str(self.error)},
            "points": {s.name: s.as_json() for s in self.shown()},
        }


async def probe_devices(settings: AgentSettings) -> list[DeviceProbe]:
    """Read every point of each device once, in the configuration's order."""
    probes = []
    for config in settings.devices:
        try:
            device = DeviceRuntime.from_config(config)
        except DriverError as exc:  # e.g. a connection the driver cannot be built for
            probes.append(DeviceProbe(config, resolve_profile(config.profile), error=exc))
            continue
        try:
            async with device.driver:
                values = await device.read_values(list(device.profile.points))
        except Exception as exc:  # noqa: BLE001 - one device's failure of any kind is a row
            probes.append(DeviceProbe(config, device.profile, error=exc))
        else:
            probes.append(DeviceProbe(config, device.profile, values=values))
    return probes
