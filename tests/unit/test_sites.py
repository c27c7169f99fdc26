"""Which site an object or event belongs to (``cloud_hub.sites``), on a real SQLite registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.events.bus import HubEvent
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from cloud_hub.sites import SiteDirectory, Sites, sees

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _device(device_id: str, agent_id: str, site: str | None) -> DeviceRow:
    return DeviceRow(
        device_id=device_id, agent_id=agent_id, profile="smart_pole", site=site, created_at=utcnow()
    )


def test_a_device_s_site_an_agent_s_sites_and_fail_closed() -> None:
    sites = Sites.of([_device("p1", "a1", "north"), _device("p2", "a1", None)])
    assert sites.sites_of("p1", "a1") == {"north"}
    assert sites.sites_of(None, "a1") == {"north", None}  # an agent: its devices' sites
    assert sites.sites_of("unknown", "a1") == frozenset()  # a device not known: no site
    assert sees(None, ()) and sees("north", {"north", None})
    assert not sees("north", {None}) and not sees("north", ())


async def test_the_directory_finds_a_device_registered_after_its_snapshot(tmp_path: Path) -> None:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    try:
        clock = Clock()
        directory = SiteDirectory(registry, max_age_s=60, miss_refresh_s=1, clock=clock)
        event = HubEvent("telemetry", 1, {}, "p1", "a1")
        assert not await directory.event_in(event, "north")  # nothing registered yet
        assert await directory.event_in(event, None)  # unscoped: everything
        async with registry.session.begin() as db:
            db.add(AgentRow(agent_id="a1", created_at=utcnow()))
            await db.flush()
            db.add(_device("p1", "a1", "north"))
        assert not await directory.event_in(event, "north")  # re-read at most every second
        clock.now += 1
        assert await directory.event_in(event, "north")
        assert not await directory.event_in(event, "south")
    finally:
        await registry.close()
