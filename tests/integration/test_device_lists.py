"""The device and agent lists are filtered and paged by the registry (SQL), with the total in
``X-Total-Count``, and a site-scoped key's page holds its site's only (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_hub.api.keys import create_api_key
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from tests.helpers import hub_settings, running_hub

pytestmark = pytest.mark.integration


async def _fleet(registry_url: str) -> str:
    """120 devices of 12 agents: sites north (80) and south (40), two profiles, a third
    online; returns a key scoped to north."""
    registry = Registry(registry_url)
    await registry.start()
    try:
        now = utcnow()
        async with registry.session.begin() as db:
            for a in range(12):
                db.add(AgentRow(agent_id=f"agent-{a:02d}", state="online", created_at=now))
            await db.flush()
            for n in range(120):
                db.add(
                    DeviceRow(
                        device_id=f"dev-{n:03d}",
                        agent_id=f"agent-{n // 10:02d}",
                        profile="smart_pole" if n % 2 else "water_meter",
                        status="online" if n % 3 == 0 else "offline",
                        site="north" if n < 80 else "south",
                        pole=f"P{n // 4:02d}",
                        created_at=now,
                    )
                )
        _, secret = await create_api_key(registry, "north viewer", "viewer", site="north")
        return secret
    finally:
        await registry.close()


async def test_lists_are_paged_and_filtered_by_the_registry(
    private_mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    north_key = await _fleet(settings.registry_url)
    async with running_hub(settings) as hub:
        api = hub.api

        async def page(path: str, **params: Any) -> tuple[list[str], int]:
            response = await api.get(path, params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            ids = [item.get("device_id", item.get("agent_id")) for item in body]
            return ids, int(response.headers["X-Total-Count"])

        first, total = await page("/api/v1/devices", limit=50)
        second, _ = await page("/api/v1/devices", limit=50, offset=50)
        last, _ = await page("/api/v1/devices", limit=50, offset=100)
        assert total == 120 and len(first) == 50 and len(last) == 20
        assert len(set(first + second + last)) == 120  # no row twice, none missing
        assert first[0] == "dev-000"  # site, pole, id: north's first pole first

        ids, total = await page("/api/v1/devices", site="south", profile="smart_pole")
        assert total == 20 and all(int(i[4:]) >= 80 and int(i[4:]) % 2 for i in ids)
        ids, total = await page("/api/v1/devices", status="online", q="dev-01")
        assert ids == ["dev-012", "dev-015", "dev-018"] and total == 3
        ids, total = await page("/api/v1/devices", q="%")  # a literal, not a wildcard
        assert (ids, total) == ([], 0)

        agents, total = await page("/api/v1/agents", limit=5)
        assert total == 12 and agents == [f"agent-{a:02d}" for a in range(5)]

        api.headers["Authorization"] = f"Bearer {north_key}"
        ids, total = await page("/api/v1/devices", limit=1000)
        assert total == 80 and all(int(i[4:]) < 80 for i in ids)
        assert await page("/api/v1/devices", site="south") == ([], 0)
        agents, total = await page("/api/v1/agents")
        assert total == 8 and agents == [f"agent-{a:02d}" for a in range(8)]
