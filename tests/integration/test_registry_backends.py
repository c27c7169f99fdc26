"""The registry on SQLite and on a real PostgreSQL: migrations, agents, devices, commands, keys."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import update
from sqlalchemy.engine import Connection

# what cloud_hub/migrations/env.py imports: each module registers its tables on Base
import cloud_hub.alarms.models
import cloud_hub.cluster.models
import cloud_hub.coap.models
import cloud_hub.console.models
import cloud_hub.dead_letters.models
import cloud_hub.events.log_models
import cloud_hub.events.webhook_models
import cloud_hub.lighting.models
import cloud_hub.provisioning.models  # noqa: F401
from cloud_hub.api.auth import Principal
from cloud_hub.api.keys import create_api_key, hash_key
from cloud_hub.console.overview import overview
from cloud_hub.registry import (
    COLLECTION_WINDOW_MS,
    DeviceFilter,
    DeviceRow,
    Registry,
    RegistryError,
    utcnow,
)
from cloud_hub.registry.migrate import head_revision
from cloud_hub.registry.models import Base
from device_profiles.wire import DeviceInfo

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_registry_round_trip(registry_url: str) -> None:
    registry = Registry(registry_url)
    await registry.start()
    try:
        await registry.agent_state(
            "a1", "online", "1.0", [DeviceInfo(device_id="p1", profile="smart_pole")]
        )
        device = await registry.get_device("p1")
        assert device is not None and device.agent_id == "a1"
        await registry.touch_devices({"p1": 1_760_000_000_000})
        device = await registry.get_device("p1")
        assert device is not None and device.last_seen is not None
        row = registry.command_row(
            command_id="c1",
            device_id="p1",
            agent_id="a1",
            name="lamp_on",
            params={},
            status="queued",
            expires_at_ms=1,
        )
        await registry.add_command(row)
        assert [c.command_id for c in await registry.pending_commands()] == ["c1"]
        updated = await registry.update_command("c1", "succeeded", "ok")
        assert updated is not None and updated.status == "succeeded"
        late = await registry.update_command("c1", "delivered", "late")  # never backwards
        assert late is not None and late.status == "succeeded"
        key_row, secret = await create_api_key(registry, "ops", "operator")
        found = await registry.api_key_by_hash(hash_key(secret))
        assert found is not None and found.key_id == key_row.key_id
        assert await registry.revoke_api_key(key_row.key_id)
        assert await registry.api_key_by_hash(hash_key(secret)) is None
    finally:
        await registry.close()
    # a second start on the migrated database changes nothing
    again = Registry(registry_url, auto_migrate=False)
    await again.start()
    await again.close()


async def test_an_unmigrated_database_is_refused_without_auto_migrate(tmp_path: Path) -> None:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", auto_migrate=False)
    with pytest.raises(RegistryError, match=f"run `cloud-hub migrate`.*|.*{head_revision()}"):
        await registry.start()
    await registry.close()


async def test_concurrent_status_updates_never_move_a_command_backwards(registry_url: str) -> None:
    """A PUBACK's ``sent`` racing the agent's ``delivered``/``succeeded`` (found by the bench)."""
    registry = Registry(registry_url)
    await registry.start()
    try:
        await registry.agent_state(
            "a1", "online", "1.0", [DeviceInfo(device_id="p1", profile="smart_pole")]
        )
        for i in range(40):
            command_id = f"race-{i}"
            await registry.add_command(
                registry.command_row(
                    command_id=command_id,
                    device_id="p1",
                    agent_id="a1",
                    name="lamp_on",
                    params={},
                    status="queued",
                    expires_at_ms=1,
                )
            )

            async def agent_reports(command_id: str = command_id) -> None:
                await registry.update_command(command_id, "delivered", "executing")
                await registry.update_command(command_id, "succeeded", "ok")

            await asyncio.gather(
                registry.update_command(command_id, "sent", "published"), agent_reports()
            )
            row = await registry.get_command(command_id)
            assert row is not None and row.status == "succeeded", (i, row and row.status)
    finally:
        await registry.close()


async def test_the_migrations_build_exactly_the_tables_the_models_declare(
    registry_url: str,
) -> None:
    """Every model change has its migration (and the other way round), on both databases:
    Alembic's autogenerate comparison of the migrated schema with the models finds nothing."""
    registry = Registry(registry_url)
    await registry.start()

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with registry.engine.connect() as connection:
            found = await connection.run_sync(differences)
    finally:
        await registry.close()
    assert found == []


async def test_collection_windows_and_the_overview_rate_are_counted_in_sql(
    registry_url: str,
) -> None:
    """Readings counted per collection window of edge time (late ones in their own window,
    too old ones no more), and the overview's collection rate from the poll plan: a device
    counts at most what it owes, one without a plan or registered this period not at all."""
    registry = Registry(registry_url)
    await registry.start()
    window = COLLECTION_WINDOW_MS
    if time.time() * 1000 % window > window - 5000:  # the figures are read in this window
        await asyncio.sleep(6)
    now_ms = int(time.time() * 1000)
    current = now_ms // window
    plan = [
        DeviceInfo(device_id="full", profile="smart_pole", reading_interval_s=60),
        DeviceInfo(device_id="half", profile="smart_pole", reading_interval_s=60),
        DeviceInfo(device_id="chatty", profile="smart_pole", reading_interval_s=60),
        DeviceInfo(device_id="unplanned", profile="smart_pole"),
        DeviceInfo(device_id="new", profile="smart_pole", reading_interval_s=60),
        DeviceInfo(device_id="other", profile="smart_pole", reading_interval_s=30),
    ]
    try:
        await registry.agent_state("a1", "online", "1.0", plan)
        span_s = (now_ms - (current - 1) * window) / 1000
        owed = span_s / 60
        async with registry.session.begin() as db:
            old = utcnow() - timedelta(hours=2)
            await db.execute(
                update(DeviceRow).where(DeviceRow.device_id != "new").values(created_at=old)
            )
            await db.execute(update(DeviceRow).values(site="north"))
            await db.execute(
                update(DeviceRow).where(DeviceRow.device_id == "other").values(site="south")
            )
        # the edge's windows: the hub flushes counts as readings are stored, in any order
        full = round(owed)
        await registry.touch_devices(
            {"full": now_ms},
            {
                "full": {current: full // 2, current - 1: full - full // 2, current - 5: 40},
                "half": {current - 1: round(owed / 2)},
                "chatty": {current: 10 * full},
                "unplanned": {current: 50},
                "new": {current: 1},
            },
        )
        await registry.touch_devices({}, {"half": {current - 3: 99}})  # too old: not counted
        devices = await registry.devices_by_id()
        assert (devices["full"].collect_window, devices["full"].collect_count) == (
            current,
            full // 2,
        )
        assert devices["full"].collect_previous == full - full // 2
        assert (devices["half"].collect_window, devices["half"].collect_count) == (
            current - 1,
            round(owed / 2),
        )
        assert devices["full"].reading_interval_s == 60
        assert devices["unplanned"].reading_interval_s is None

        everyone = Principal(key_id="k", name="k", role="viewer", site=None)
        figures = {s.site: s for s in (await overview(registry, everyone)).sites}
        north = figures["north"]
        assert north.devices == 5 and north.planned == 3  # not "unplanned", not "new"
        assert north.expected == pytest.approx(3 * owed, rel=0.01)
        assert north.collected == pytest.approx(min(full, owed) + round(owed / 2) + owed, rel=0.01)
        assert north.collection_rate == pytest.approx(north.collected / north.expected, rel=1e-6)
        assert figures["south"].collection_rate == 0.0  # planned, silent
        scoped = Principal(key_id="k", name="k", role="viewer", site="south")
        assert [s.site for s in (await overview(registry, scoped)).sites] == ["south"]

        # the list filters by tag in SQL
        async with registry.session.begin() as db:
            await db.execute(
                update(DeviceRow)
                .where(DeviceRow.device_id.in_(["full", "half"]))
                .values(tags={"road": "G205", "kind": "lamp"})
            )
            await db.execute(
                update(DeviceRow).where(DeviceRow.device_id == "chatty").values(tags={"road": "S1"})
            )
        rows, total = await registry.page_devices(DeviceFilter(tags={"road": "G205"}), 10)
        assert total == 2 and [r.device_id for r in rows] == ["full", "half"]
        rows, _ = await registry.page_devices(
            DeviceFilter(tags=DeviceFilter.tag_pairs(["road=G205", "kind = lamp"])), 10
        )
        assert len(rows) == 2
        assert [d.device_id for d in await registry.select_devices(tags={"road": "S1"})] == [
            "chatty"
        ]
        assert await registry.select_devices(tags={'ro"ad': "S1"}) == []
        with pytest.raises(ValueError, match="not key=value"):
            DeviceFilter.tag_pairs(["road"])
    finally:
        await registry.close()
