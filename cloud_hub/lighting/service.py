"""What the API does with strategies: check them against the devices' profiles, store them
(waking the scheduler), preview them (with the lamp state each step leaves,
:mod:`~cloud_hub.lighting.effect`) and apply the step in effect now."""

from __future__ import annotations

from collections.abc import Callable

from cloud_hub.lighting.models import LightingFiringRow, LightingStrategyRow
from cloud_hub.lighting.schedule import Firing, in_effect
from cloud_hub.lighting.scheduler import GroupCommands, LightingScheduler, send_claimed
from cloud_hub.lighting.settings import LightingSettings
from cloud_hub.lighting.spec import StrategySelector, StrategySpec
from cloud_hub.lighting.store import Claim, LightingStore, spec_of
from cloud_hub.registry import Registry, utcnow
from device_profiles import CommandRejected, DeviceProfile

__all__ = ["Lighting", "NothingInEffect"]


class NothingInEffect(LookupError):
    """No step of the strategy was scheduled in the last 8 days: nothing to apply."""


class Lighting:
    """The lighting strategies of a hub: their store, their scheduler (a leader duty) and
    the checks and actions of the API."""

    def __init__(
        self,
        registry: Registry,
        commands: GroupCommands,
        profile_of: Callable[[str], DeviceProfile | None],
        settings: LightingSettings,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.store = LightingStore(registry)
        self.commands = commands
        self.scheduler = LightingScheduler(self.store, commands, settings)
        self._profile_of = profile_of

    async def profiles(self, selector: StrategySelector) -> dict[str, DeviceProfile]:
        """The profiles (by name) of the devices ``selector`` picks now."""
        devices = await self.registry.select_devices(**selector.model_dump(exclude_none=True))
        profiles: dict[str, DeviceProfile] = {}
        for device in devices:
            profile = self._profile_of(device.device_id)
            if profile is not None:
                profiles.setdefault(profile.name, profile)
        return profiles

    async def check(self, spec: StrategySpec) -> None:
        """CommandRejected unless every step's command and params are accepted by the profile
        of at least one device the selector picks now."""
        profiles = await self.profiles(spec.selector)
        if not profiles:
            raise CommandRejected("selector: it picks no device with a known profile")
        for index, step in enumerate(spec.steps):
            reasons = []
            for profile in profiles.values():
                try:
                    profile.resolve_command(step.command, step.params)
                    break
                except CommandRejected as exc:
                    reasons.append(exc.reason)
            else:
                raise CommandRejected(f"steps[{index}]: {'; '.join(reasons)}")

    async def create(self, spec: StrategySpec, created_by: str) -> LightingStrategyRow:
        await self.check(spec)
        row = await self.store.create(spec, created_by)
        self.scheduler.wake()
        return row

    async def replace(self, strategy_id: str, spec: StrategySpec) -> LightingStrategyRow | None:
        await self.check(spec)
        row = await self.store.replace(strategy_id, spec)
        self.scheduler.wake()
        return row

    async def remove(self, strategy_id: str) -> bool:
        removed = await self.store.remove(strategy_id)
        self.scheduler.wake()
        return removed

    async def apply_now(self, row: LightingStrategyRow) -> tuple[Firing, LightingFiringRow]:
        """Send the step in effect now (the latest scheduled before now) to the devices the
        strategy selects now, e.g. after new poles were installed; recorded as a firing with
        trigger ``apply_now``. NothingInEffect if no step happened in the last 8 days."""
        now = utcnow()
        current = in_effect(spec_of(row), now)
        if current is None:
            raise NothingInEffect("no step of this strategy was scheduled in the last 8 days")
        claimed = await self.store.claim(
            Claim(
                row.strategy_id,
                current.step,
                now,
                current.command,
                current.params,
                trigger="apply_now",
            )
        )
        if claimed is None:  # the same microsecond twice: nothing to do again
            raise NothingInEffect("this step is being applied already")
        fired = await send_claimed(
            self.store, self.commands, claimed, row.selector, self.settings.command_ttl_s
        )
        return current, fired
