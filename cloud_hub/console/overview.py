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

from sqlalchemy import and_, case, func, or_, select

from cloud_hub.alarms.models import AlarmRow
from cloud_hub.api.auth import Principal
from cloud_hub.hub import Hub
from cloud_hub.lighting.models import LightingFiringRow
from cloud_hub.registry import AgentRow, DeviceRow

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


async def overview(hub: Hub, caller: Principal, timezone: str = "Asia/Shanghai") -> Overview:
    """The figures ``caller`` may see (a site-scoped person: their site's only), counted in
    the database (GROUP BY), never by loading the rows."""
    now = datetime.now(UTC)
    out = Overview()
    scope = caller.site
    in_site = DeviceRow.site == scope if scope is not None else None
    online = case((DeviceRow.status == "online", 1), else_=0)
    reporting = case((DeviceRow.last_seen >= now - REPORTING_WINDOW, 1), else_=0)
    per_site = select(
        DeviceRow.site, DeviceRow.status, func.count(), func.sum(online), func.sum(reporting)
    ).group_by(DeviceRow.site, DeviceRow.status)
    agents = select(AgentRow.state, func.count()).group_by(AgentRow.state)
    alarms = (
        select(AlarmRow.severity, func.count())
        .where(AlarmRow.state == "active")
        .group_by(AlarmRow.severity)
    )
    if in_site is not None:
        site_devices = select(DeviceRow.device_id).where(in_site)
        site_agents = select(DeviceRow.agent_id).where(in_site)
        per_site = per_site.where(in_site)
        agents = agents.where(AgentRow.agent_id.in_(site_agents))
        alarms = alarms.where(
            or_(
                AlarmRow.device_id.in_(site_devices),
                and_(AlarmRow.device_id.is_(None), AlarmRow.agent_id.in_(site_agents)),
            )
        )
    midnight = datetime.now(ZoneInfo(timezone)).replace(hour=0, minute=0, second=0, microsecond=0)
    async with hub.registry.session() as db:
        site_rows = (await db.execute(per_site)).all()
        out.agents = Counter(dict((await db.execute(agents)).all()))
        counts = dict((await db.execute(alarms)).all())
        firings = (
            await db.execute(
                select(LightingFiringRow.outcome, func.count())
                .where(LightingFiringRow.fired_at >= midnight.astimezone(UTC))
                .group_by(LightingFiringRow.outcome)
            )
        ).all()
    figures: dict[str | None, SiteFigures] = {}
    for site, status, n, n_online, n_reporting in site_rows:
        out.devices[status] += n
        f = figures.setdefault(site, SiteFigures(site))
        f.devices += n
        f.online += int(n_online or 0)
        f.reporting += int(n_reporting or 0)
    out.alarms = {severity: counts.get(severity, 0) for severity in SEVERITY_ORDER}
    out.sites = sorted(figures.values(), key=lambda f: (f.site is None, f.site or ""))
    if caller.site is None:  # strategies span sites: their firings are shown unscoped only
        out.lighting_today = Counter(dict(firings))
    return out
