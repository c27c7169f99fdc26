"""Which site an object or an event belongs to: the one answer the API's object-level checks,
the event stream and webhooks share.

A device has a site (set when it is provisioned); an agent belongs to the sites of its devices
(one, as provisioning plans it; none while it has no device with a site). An event belongs to
its device's site, or, for an event about a whole agent, to its agent's sites. A caller scoped
to a site (an API key's ``site``, a webhook's ``site``) sees an object or an event only when it
belongs to that site; one without a site sees everything. What has no known site is seen only
by unscoped callers (fail closed).

:class:`SiteDirectory` reads the registry's devices into a :class:`Sites` snapshot, kept for a
short while so an event channel does not query the registry per event; a lookup that misses
re-reads it (at most every ``miss_refresh_s``) so a device registered a moment ago is found.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from cloud_hub.events.bus import HubEvent
from cloud_hub.registry import DeviceRow, Registry

__all__ = ["SiteDirectory", "Sites", "sees"]


def sees(scope: str | None, sites: Iterable[str | None]) -> bool:
    """Whether a caller scoped to ``scope`` (None: every site) sees what lies in ``sites``."""
    return scope is None or scope in set(sites)


@dataclass(frozen=True)
class Sites:
    """A snapshot: each device's site and each agent's sites (those of its devices)."""

    of_device: Mapping[str, str | None] = field(default_factory=dict)
    of_agent: Mapping[str, frozenset[str | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, devices: Iterable[DeviceRow]) -> Sites:
        of_device: dict[str, str | None] = {}
        of_agent: dict[str, set[str | None]] = {}
        for device in devices:
            of_device[device.device_id] = device.site
            of_agent.setdefault(device.agent_id, set()).add(device.site)
        return cls(of_device, {agent: frozenset(s) for agent, s in of_agent.items()})

    def agent_sites(self, agent_id: str | None) -> frozenset[str | None]:
        return self.of_agent.get(agent_id, frozenset()) if agent_id is not None else frozenset()

    def sites_of(self, device_id: str | None, agent_id: str | None) -> frozenset[str | None]:
        """The sites of something about a device (its site) or, without one, about a whole
        agent (its agent's sites); empty: unknown. Alarms, dead letters and events alike."""
        if device_id is not None:
            if device_id not in self.of_device:
                return frozenset()
            return frozenset({self.of_device[device_id]})
        return self.agent_sites(agent_id)

    def knows(self, device_id: str | None, agent_id: str | None) -> bool:
        if device_id is not None:
            return device_id in self.of_device
        return agent_id is not None and agent_id in self.of_agent


class SiteDirectory:
    """The registry's devices as a :class:`Sites` snapshot, re-read when it is older than
    ``max_age_s`` or (at most every ``miss_refresh_s``) when an event's device is missing."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_age_s: float = 5.0,
        miss_refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self.max_age_s = max_age_s
        self.miss_refresh_s = miss_refresh_s
        self._clock = clock
        self._sites: Sites | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def current(self, max_age_s: float | None = None) -> Sites:
        """The snapshot, re-read if older than ``max_age_s`` (the directory's by default;
        0: read now)."""
        limit = self.max_age_s if max_age_s is None else max_age_s
        if self._sites is not None and self._clock() - self._read_at < limit:
            return self._sites
        async with self._lock:
            if self._sites is None or self._clock() - self._read_at >= limit:
                self._sites = Sites.of(await self._registry.list_devices())
                self._read_at = self._clock()
            return self._sites

    def invalidate(self) -> None:
        """Forget the snapshot (a device's site changed): the next lookup reads the registry."""
        self._sites = None

    async def event_in(self, event: HubEvent, scope: str | None) -> bool:
        """Whether a consumer scoped to ``scope`` (None: every site) may get ``event``."""
        if scope is None:
            return True
        sites = await self.current()
        if not sites.knows(event.device_id, event.agent_id):
            sites = await self.current(self.miss_refresh_s)
        return sees(scope, sites.sites_of(event.device_id, event.agent_id))
