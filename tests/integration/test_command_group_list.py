"""``GET /api/v1/command-groups``: newest first, paged (``limit`` at most 200, ``offset``,
``X-Total-Count``), each group with its progress counts, a site-scoped key seeing the groups
confined to its site only; and the registry query under it on SQLite and PostgreSQL: three
statements for a page whatever its size (the counts in one GROUP BY), the site filtered in SQL.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update

from cloud_hub.api.keys import create_api_key
from cloud_hub.registry import AgentRow, CommandGroupRow, CommandRow, DeviceRow, Registry, utcnow
from device_profiles.wire import QOS, AgentState, Channel, DeviceInfo, encode, topic
from iot_runtime.mqtt import make_client
from tests.helpers import eventually, hub_settings, make_keys, running_hub

pytestmark = pytest.mark.integration

SITES = {"pole-n1": "north", "pole-s1": "south", "pole-s2": "south"}


async def test_the_list_is_paged_newest_first_with_counts_and_confined_to_a_site(
    private_mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    keys = await make_keys(settings.registry_url, "admin", "viewer")
    registry = Registry(settings.registry_url)
    await registry.start()
    _, north_key = await create_api_key(registry, "north ops", "operator", "north")
    north = {"Authorization": f"Bearer {north_key}"}
    agent_id = f"agent-{unique_id}"
    birth = AgentState(
        agent_id=agent_id,
        state="online",
        devices=[DeviceInfo(device_id=d, profile="smart_pole") for d in SITES],
    )
    try:
        async with (
            running_hub(settings, keys) as hub,
            make_client(settings.mqtt, f"fake-{unique_id}", persistent_session=False) as agent,
        ):
            # an agent that is born and never answers: its commands stay sent (its birth sent
            # again until the hub, which may still be subscribing, has it)
            async def born() -> bool | None:
                await agent.publish(topic(agent_id, Channel.STATE), encode(birth), qos=QOS)
                listed = {d["device_id"] for d in (await hub.api.get("/api/v1/devices")).json()}
                return True if listed >= set(SITES) else None

            await eventually(born)
            async with registry.session.begin() as db:
                for device_id, site in SITES.items():
                    await db.execute(
                        update(DeviceRow).where(DeviceRow.device_id == device_id).values(site=site)
                    )
            api = hub.api
            empty = await api.get("/api/v1/command-groups")
            assert empty.status_code == 200 and empty.json() == []
            assert empty.headers["X-Total-Count"] == "0"

            sent: list[str] = []
            for selector in (
                {"site": "south"},
                {"site": "north"},
                {"site": "south"},
                {"device_ids": ["pole-n1", "pole-s1"]},  # across sites: unscoped keys only
                {"site": "north", "profile": "smart_pole"},
            ):
                body = {"selector": selector, "name": "set_dimming", "params": {"level": 30}}
                response = await api.post("/api/v1/command-groups", json=body)
                assert response.status_code == 202, response.text
                sent.append(response.json()["group_id"])
            newest_first = sent[::-1]

            async def settled() -> list[dict[str, Any]] | None:  # handed to the broker
                items = (await api.get("/api/v1/command-groups")).json()
                return None if any("queued" in g["by_status"] for g in items) else items

            everything = await eventually(settled)
            assert [g["group_id"] for g in everything] == newest_first
            assert [g["total"] for g in everything] == [1, 2, 2, 1, 2]
            assert all(sum(g["by_status"].values()) == g["total"] for g in everything)
            for item in everything:  # the same progress as the group's own route
                one = (await api.get(f"/api/v1/command-groups/{item['group_id']}")).json()
                assert one == item

            # a cancelled command shows in its group's counts
            async with registry.session() as db:
                command_id = await db.scalar(
                    select(CommandRow.command_id).where(CommandRow.group_id == sent[1])
                )
            assert (await api.post(f"/api/v1/commands/{command_id}/cancel")).status_code == 200
            listed = (await api.get("/api/v1/command-groups")).json()
            second = next(g for g in listed if g["group_id"] == sent[1])  # one device
            assert second["by_status"] == {"cancelled": 1} and second["done"] is True
            assert all(not g["done"] for g in listed if g["group_id"] != sent[1])

            # a whole group cancelled in one step, once (audited once, a second time nothing)
            first = next(g for g in listed if g["group_id"] == sent[0])
            whole = await api.post(f"/api/v1/command-groups/{sent[0]}/cancel")
            assert whole.status_code == 200, whole.text
            assert whole.json()["cancelled"] == first["total"] > 0
            assert whole.json()["progress"]["by_status"] == {"cancelled": first["total"]}
            again = (await api.post(f"/api/v1/command-groups/{sent[0]}/cancel")).json()
            assert again["cancelled"] == 0
            audit = (
                await api.get("/api/v1/audit", params={"action": "command_group.cancel"})
            ).json()["items"]
            assert [e["target"] for e in audit] == [f"command_group:{sent[0]}"]
            listed = (await api.get("/api/v1/command-groups")).json()

            # pages
            pages: list[str] = []
            for offset in (0, 2, 4):
                page = await api.get(
                    "/api/v1/command-groups", params={"limit": 2, "offset": offset}
                )
                assert page.headers["X-Total-Count"] == "5"
                pages += [g["group_id"] for g in page.json()]
            assert pages == newest_first
            beyond = await api.get("/api/v1/command-groups", params={"offset": 10})
            assert beyond.json() == [] and beyond.headers["X-Total-Count"] == "5"
            most = await api.get("/api/v1/command-groups", params={"limit": 200})
            assert most.status_code == 200
            for params in ({"limit": 201}, {"limit": 0}, {"offset": -1}, {"offset": 10**23}):
                refused = await api.get("/api/v1/command-groups", params=params)
                assert refused.status_code == 422, params
                assert refused.headers["content-type"] == "application/problem+json"
            viewer = {"Authorization": f"Bearer {keys['viewer']}"}
            assert (await api.get("/api/v1/command-groups", headers=viewer)).status_code == 200

            # a key of site north: north's two groups, counted as such
            scoped = await api.get("/api/v1/command-groups", headers=north)
            assert [g["group_id"] for g in scoped.json()] == [sent[4], sent[1]]
            assert scoped.headers["X-Total-Count"] == "2"
            later = await api.get(
                "/api/v1/command-groups", params={"limit": 1, "offset": 1}, headers=north
            )
            assert [g["group_id"] for g in later.json()] == [sent[1]]
            for hidden in (sent[0], sent[3]):
                missing = await api.get(f"/api/v1/command-groups/{hidden}", headers=north)
                assert missing.status_code == 404
    finally:
        await registry.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_page_groups_counts_in_one_group_by_and_filters_the_site_in_sql(
    registry_url: str,
) -> None:
    registry = Registry(registry_url)
    await registry.start()
    try:
        now = utcnow()
        statuses = ("succeeded", "failed", "sent", "queued", "expired")
        async with registry.session.begin() as db:
            db.add(AgentRow(agent_id="a1", state="online", created_at=now))
            await db.flush()
            for n in range(5):
                db.add(DeviceRow(device_id=f"d{n}", agent_id="a1", profile="p", created_at=now))
            await db.flush()
            for g in range(60):  # 30 of north, 20 of south, 10 by device ids alone
                site = "north" if g % 2 == 0 else ("south" if g % 6 != 5 else None)
                selector = {"site": site} if site else {"device_ids": ["d0"]}
                db.add(
                    CommandGroupRow(
                        group_id=f"g{g:03d}", name="set_dimming", params={"level": g},
                        selector=selector, rejected={}, created_by="k",
                        created_at=now + timedelta(seconds=g),
                    )
                )  # fmt: skip
                for n in range(g % 5 + 1):
                    db.add(
                        Registry.command_row(
                            command_id=f"c{g:03d}-{n}", device_id=f"d{n}", agent_id="a1",
                            name="set_dimming", params={}, status=statuses[(g + n) % 5],
                            expires_at_ms=0, group_id=f"g{g:03d}",
                        )
                    )  # fmt: skip
        statements: list[str] = []

        def counted(*args: Any) -> None:
            statements.append(str(args[2]))

        event.listen(registry.engine.sync_engine, "before_cursor_execute", counted)
        page, total = await registry.page_groups(None, 50, 0)
        event.remove(registry.engine.sync_engine, "before_cursor_execute", counted)
        assert total == 60 and len(page) == 50
        assert len(statements) == 3, statements  # total, page, one GROUP BY for all counts
        assert [g.group_id for g, _ in page] == [f"g{g:03d}" for g in range(59, 9, -1)]
        for group, counts in page:
            g = int(group.group_id[1:])
            expected: dict[str, int] = {}
            for n in range(g % 5 + 1):
                expected[statuses[(g + n) % 5]] = expected.get(statuses[(g + n) % 5], 0) + 1
            assert counts == expected, group.group_id

        north, north_total = await registry.page_groups("north", 10, 25)
        assert north_total == 30
        assert [g.group_id for g, _ in north] == [f"g{g:03d}" for g in (8, 6, 4, 2, 0)]
        south, south_total = await registry.page_groups("south", 200, 0)
        assert south_total == 20 and all(g.selector == {"site": "south"} for g, _ in south)
        nowhere, none_total = await registry.page_groups("east", 10, 0)
        assert (nowhere, none_total) == ([], 0)
    finally:
        await registry.close()
