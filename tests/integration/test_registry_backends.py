"""The registry on SQLite and on a real PostgreSQL: migrations, agents, devices, commands, keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
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
from cloud_hub.api.keys import create_api_key, hash_key
from cloud_hub.registry import Registry, RegistryError
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
