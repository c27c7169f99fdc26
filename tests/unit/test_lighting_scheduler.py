"""The lighting scheduler driven with an injected clock, on a SQLite registry and a fake
sender of group commands: once only, catch-up, missed, failures recorded, skips."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.lighting import LightingScheduler, LightingSettings, LightingStore, StrategySpec
from cloud_hub.registry import CommandGroupRow, Registry, utcnow
from device_profiles import CommandRejected

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai


class FakeHub:
    """Records group commands; fails or rejects when told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[dict[str, Any], str, dict[str, Any], str]] = []
        self.error: Exception | None = None

    async def send_group_command(
        self,
        selector: dict[str, Any],
        name: str,
        params: dict[str, Any],
        ttl_s: float | None = None,
        created_by: str = "",
    ) -> CommandGroupRow:
        if self.error is not None:
            raise self.error
        self.sent.append((selector, name, params, created_by))
        return CommandGroupRow(
            group_id=uuid.uuid4().hex,
            name=name,
            params=params,
            selector=selector,
            rejected={},
            created_by=created_by,
            created_at=utcnow(),
        )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LightingStore]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    try:
        yield LightingStore(registry)
    finally:
        await registry.close()


async def _strategy(store: LightingStore, *steps: str, created: datetime) -> str:
    spec = StrategySpec.model_validate(
        {
            "name": "ring road",
            "selector": {"site": "ring-road"},
            "steps": [
                {"at": at, "command": "set_dimming", "params": {"level": 10 * i}}
                for i, at in enumerate(steps)
            ],
        }
    )
    row = await store.create(spec, created_by="k1")
    # as if created at ``created`` (the scheduler considers instants after updated_at only)
    async with store.registry.session.begin() as db:
        stored = await db.merge(row)
        stored.created_at = stored.updated_at = created
    return row.strategy_id


def _scheduler(store: LightingStore, hub: FakeHub, **settings: Any) -> LightingScheduler:
    return LightingScheduler(store, hub, LightingSettings(**settings))


async def test_a_step_fires_once_even_with_two_leaders_and_a_restart(store: LightingStore) -> None:
    strategy_id = await _strategy(store, "23:30", created=T0 - timedelta(hours=1))
    hub = FakeHub()
    first, second = _scheduler(store, hub), _scheduler(store, hub)
    assert await first.tick(T0 - timedelta(seconds=1)) == T0  # next step within poll_s
    assert hub.sent == []
    await first.tick(T0)
    await second.tick(T0 + timedelta(seconds=1))  # another leader, or the hub restarted
    await _scheduler(store, hub).tick(T0 + timedelta(minutes=5))
    assert hub.sent == [
        ({"site": "ring-road"}, "set_dimming", {"level": 0}, f"strategy:{strategy_id}")
    ]
    [firing] = await store.firings(strategy_id, 10)
    assert firing.outcome == "sent" and firing.group_id is not None
    assert firing.trigger == "schedule" and firing.step == 0


async def test_late_within_catch_up_fires_beyond_it_is_recorded_missed(
    store: LightingStore,
) -> None:
    strategy_id = await _strategy(store, "23:00", "23:30", created=T0 - timedelta(hours=2))
    hub = FakeHub()
    # the hub comes back at 23:40: 23:30 is 10 min late (fired), 23:00 is 40 min late (missed)
    await _scheduler(store, hub, catch_up_s=900).tick(T0 + timedelta(minutes=10))
    assert [(name, params) for _, name, params, _ in hub.sent] == [("set_dimming", {"level": 10})]
    newest, oldest = await store.firings(strategy_id, 10)
    assert (newest.step, newest.outcome) == (1, "sent")
    assert (oldest.step, oldest.outcome, oldest.group_id) == (0, "missed", None)
    assert "more than catch_up_s" in oldest.detail
    await _scheduler(store, hub).tick(T0 + timedelta(minutes=11))  # nothing happens twice
    assert len(hub.sent) == 1 and len(await store.firings(strategy_id, 10)) == 2


async def test_steps_before_the_strategy_existed_are_not_sent(store: LightingStore) -> None:
    strategy_id = await _strategy(store, "23:30", created=T0 + timedelta(seconds=1))
    hub = FakeHub()
    await _scheduler(store, hub).tick(T0 + timedelta(seconds=5))
    assert hub.sent == [] and await store.firings(strategy_id, 10) == []


async def test_a_failing_strategy_is_recorded_and_the_others_still_fire(
    store: LightingStore,
) -> None:
    broken = await _strategy(store, "23:30", created=T0 - timedelta(hours=1))
    rejected = await _strategy(store, "23:30", created=T0 - timedelta(hours=1))
    fine = await _strategy(store, "23:30", created=T0 - timedelta(hours=1))
    hub = FakeHub()

    class Flaky(FakeHub):
        async def send_group_command(
            self,
            selector: dict[str, Any],
            name: str,
            params: dict[str, Any],
            ttl_s: float | None = None,
            created_by: str = "",
        ) -> CommandGroupRow:
            if created_by == f"strategy:{broken}":
                raise RuntimeError("bus on fire")
            if created_by == f"strategy:{rejected}":
                raise CommandRejected("no selected device accepts 'set_dimming'")
            return await hub.send_group_command(selector, name, params, ttl_s, created_by)

    await LightingScheduler(store, Flaky(), LightingSettings()).tick(T0)
    outcomes = {sid: (await store.firings(sid, 1))[0] for sid in (broken, rejected, fine)}
    assert outcomes[broken].outcome == "failed"
    assert "bus on fire" in outcomes[broken].detail
    assert outcomes[rejected].outcome == "rejected"
    assert outcomes[fine].outcome == "sent"
    assert [created_by for *_, created_by in hub.sent] == [f"strategy:{fine}"]
