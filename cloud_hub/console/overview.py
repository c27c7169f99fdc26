"""The overview's figures: agents and devices online, active alarms, today's lighting, and the
collection and online rates per site beside the county plan's targets.

Collection rate: the share of a site's devices with a reading in the last
:data:`REPORTING_WINDOW` (the county plan's 数据采集率, target ≥ 70 %). Online rate: the share
whose status is ``online`` (its 监控率, target ≥ 90 %). Both are read from the registry
(``last_seen``, ``status``), scoped to the person's site.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from cloud_hub.alarms.models import AlarmRow
from cloud_hub.api.auth import Principal
from cloud_hub.hub import Hub
from cloud_hub.lighting.models import LightingFiringRow
from cloud_hub.registry import AgentRow, DeviceRow
from cloud_hub.sites import Sites, sees

__all__ = [
    "COLLECTION_TARGET",
    "ONLINE_TARGET",
    "REPORTING_WINDOW",
    "Overview",
    "SiteFigures",
    "overview",
]

COLLECTION_TARGET = 0.70
ONLINE_TARGET = 0.90
REPORTING_WINDOW = timedelta(minutes=15)
SEVERITY_ORDER = ("critical", "major", "minor", "warning", "info")


@dataclass
class SiteFigures:
    site: str | None
    devices: int = 0
    online: int = 0
    reporting: int = 0

    @property
    def collection_rate(self) -> float | None:
        return self.reporting / self.devices if self.devices else None

    @property
    def online_rate(self) -> float | None:
        return self.online / self.devices if self.devices else None


@dataclass
class Overview:
    agents: Counter[str] = field(default_factory=Counter)
    devices: Counter[str] = field(default_factory=Counter)
    alarms: dict[str, int] = field(default_factory=dict)
    lighting_today: Counter[str] = field(default_factory=Counter)
    sites: list[SiteFigures] = field(default_factory=list)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


async def overview(hub: Hub, caller: Principal, timezone: str = "Asia/Shanghai") -> Overview:
    """The figures ``caller`` may see (a site-scoped person: their site's only)."""
    now = datetime.now(UTC)
    out = Overview()
    async with hub.registry.session() as db:
        query = select(DeviceRow)
        if caller.site is not None:
            query = query.where(DeviceRow.site == caller.site)
        devices = list((await db.scalars(query)).all())
        agents = list((await db.scalars(select(AgentRow))).all())
        active = list((await db.scalars(select(AlarmRow).where(AlarmRow.state == "active"))).all())
        midnight = datetime.now(ZoneInfo(timezone)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        firings = (
            await db.execute(
                select(LightingFiringRow.outcome, func.count())
                .where(LightingFiringRow.fired_at >= midnight.astimezone(UTC))
                .group_by(LightingFiringRow.outcome)
            )
        ).all()
    sites = Sites.of(devices)  # a scoped person's devices only: the rest is unknown, unseen
    per_site: dict[str | None, SiteFigures] = {}
    for device in devices:
        out.devices[device.status] += 1
        figures = per_site.setdefault(device.site, SiteFigures(device.site))
        figures.devices += 1
        figures.online += device.status == "online"
        seen = _aware(device.last_seen)
        figures.reporting += seen is not None and now - seen <= REPORTING_WINDOW
    for agent in agents:
        if sees(caller.site, sites.agent_sites(agent.agent_id)):
            out.agents[agent.state] += 1
    counts: Counter[str] = Counter()
    for alarm in active:
        if sees(caller.site, sites.sites_of(alarm.device_id, alarm.agent_id)):
            counts[alarm.severity] += 1
    out.alarms = {severity: counts.get(severity, 0) for severity in SEVERITY_ORDER}
    if caller.site is None:  # strategies span sites: their firings are shown unscoped only
        out.lighting_today = Counter(dict(firings))
    out.sites = sorted(per_site.values(), key=lambda f: (f.site is None, f.site or ""))
    return out
