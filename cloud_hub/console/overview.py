"""The overview's figures: agents and devices online, active alarms, today's lighting, and the
collection and online rates per site beside the county plan's targets.

Collection rate (the county plan's 数据采集率, target ≥ 70 %): readings stored against readings
the poll plan expects, over the last complete collection window
(:data:`~cloud_hub.registry.models.COLLECTION_WINDOW_MS`, 15 min) and the current one so far.
Each device's agent states its plan in its birth message (``reading_interval_s``: at least one
reading this often); the hub counts each device's stored readings per window of edge read time
(so readings that arrive late from an agent's store-and-forward count where they belong). A
device counts at most what it was expected to send (reporting on change more often does not
make up for a silent neighbour); a device without a stated plan, or registered during that
period, is not counted yet. Online rate (its 监控率, target ≥ 90 %): the share of devices whose
status is ``online``. Both are counted in the registry (GROUP BY), scoped to the person's site.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, case, func, literal, or_, select

from cloud_hub.alarms.models import AlarmRow
from cloud_hub.api.auth import Principal
from cloud_hub.api.routes_alarms import SEVERITIES
from cloud_hub.lighting.models import LightingFiringRow
from cloud_hub.registry import COLLECTION_WINDOW_MS, AgentRow, DeviceRow, Registry

__all__ = [
    "COLLECTION_TARGET",
    "ONLINE_TARGET",
    "Overview",
    "SiteFigures",
    "overview",
]

COLLECTION_TARGET = 0.70
ONLINE_TARGET = 0.90


@dataclass
class SiteFigures:
    site: str | None
    devices: int = 0
    online: int = 0
    #: readings stored and expected over the collection period (devices with a poll plan)
    collected: float = 0.0
    expected: float = 0.0
    #: devices whose poll plan is counted
    planned: int = 0

    @property
    def collection_rate(self) -> float | None:
        return min(1.0, self.collected / self.expected) if self.expected > 0 else None

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


def collection_terms(now: datetime) -> tuple[ColumnElement[float], ColumnElement[float]]:
    """Per device, readings stored (at most the expected number) and readings expected over
    the previous complete collection window and the current one so far."""
    now_ms = int(now.timestamp() * 1000)
    current = now_ms // COLLECTION_WINDOW_MS
    since = datetime.fromtimestamp((current - 1) * COLLECTION_WINDOW_MS / 1000, UTC)
    span_s = (now_ms - (current - 1) * COLLECTION_WINDOW_MS) / 1000
    stored = case(
        (DeviceRow.collect_window == current, DeviceRow.collect_count + DeviceRow.collect_previous),
        (DeviceRow.collect_window == current - 1, DeviceRow.collect_count),
        else_=0,
    )
    planned = and_(DeviceRow.reading_interval_s > 0, DeviceRow.created_at <= since)
    expected = case((planned, literal(span_s) / DeviceRow.reading_interval_s), else_=0.0)
    counted = case((and_(planned, stored >= expected), expected), (planned, stored), else_=0.0)
    return counted, expected


async def overview(
    registry: Registry, caller: Principal, timezone: str = "Asia/Shanghai"
) -> Overview:
    """The figures ``caller`` may see (a site-scoped person: their site's only), counted in
    the database (GROUP BY), never by loading the rows."""
    now = datetime.now(UTC)
    out = Overview()
    scope = caller.site
    in_site = DeviceRow.site == scope if scope is not None else None
    online = case((DeviceRow.status == "online", 1), else_=0)
    counted, expected = collection_terms(now)
    planned = case((expected > 0, 1), else_=0)
    per_site = select(
        DeviceRow.site,
        DeviceRow.status,
        func.count(),
        func.sum(online),
        func.sum(counted),
        func.sum(expected),
        func.sum(planned),
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
    async with registry.session() as db:
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
    for site, status, n, n_online, n_counted, n_expected, n_planned in site_rows:
        out.devices[status] += n
        f = figures.setdefault(site, SiteFigures(site))
        f.devices += n
        f.online += int(n_online or 0)
        f.collected += float(n_counted or 0)
        f.expected += float(n_expected or 0)
        f.planned += int(n_planned or 0)
    out.alarms = {severity: counts.get(severity, 0) for severity in SEVERITIES}
    out.sites = sorted(figures.values(), key=lambda f: (f.site is None, f.site or ""))
    if caller.site is None:  # strategies span sites: their firings are shown unscoped only
        out.lighting_today = Counter(dict(firings))
    return out
