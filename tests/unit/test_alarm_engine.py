"""The alarm engine: thresholds, durations in edge time, booleans, life cycle, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.alarms import (
    AlarmAlreadyAcknowledged,
    AlarmEngine,
    AlarmNotFound,
    AlarmRow,
    InvalidCursor,
)
from cloud_hub.events.bus import EventBus, HubEvent, Subscription
from cloud_hub.registry import Registry
from device_profiles import DeviceProfile, load_builtin_profile

pytestmark = pytest.mark.unit

POLE = load_builtin_profile("smart_pole")
T0 = 1_790_000_000_000  # edge time (ms) of the first reading in each test


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _profiles(device_id: str) -> DeviceProfile | None:
    return POLE if device_id.startswith("pole") else None


class Rig:
    """An engine on a temp-file registry, the bus it publishes to, and a tap on alarm events."""

    def __init__(
        self, path: Path, profile_of: Callable[[str], DeviceProfile | None] = _profiles
    ) -> None:
        self.path = path
        self.bus = EventBus()
        self.clock = FakeClock()
        self.alarms: Subscription = self.bus.subscribe(lambda e: e.kind == "alarm")
        self.registry = Registry(f"sqlite+aiosqlite:///{path}")
        self.engine = AlarmEngine(self.bus, self.registry, profile_of, self.clock)

    async def start(self) -> None:
        await self.registry.start()
        await self.engine.start()

    async def close(self) -> None:
        self.engine.close()
        await self.registry.close()

    async def reading(self, at_s: float, device_id: str = "pole-1", **values: Any) -> None:
        await self.engine.handle(
            HubEvent(
                kind="telemetry",
                ts_ms=T0 + int(at_s * 1000),
                data={"profile": "smart_pole", "values": values},
                device_id=device_id,
                agent_id="agent-1",
            )
        )

    async def status(self, scope: str, state: str, device_id: str | None = None) -> None:
        await self.engine.handle(
            HubEvent(
                kind="status",
                ts_ms=T0,
                data={"scope": scope, "state": state},
                device_id=device_id,
                agent_id="agent-1",
            )
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        while not self.alarms.queue.empty():
            out.append(self.alarms.queue.get_nowait().data)
        return out

    async def rows(self, **filters: Any) -> list[AlarmRow]:
        return (await self.engine.store.page(limit=1000, **filters)).items


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "registry.db")
    await rig.start()
    yield rig
    await rig.close()


async def test_threshold_raises_once_and_clears(rig: Rig) -> None:
    await rig.reading(0, tilt=3)
    assert await rig.rows() == []
    await rig.reading(1, tilt=6)
    [row] = await rig.rows()
    assert (row.rule, row.severity, row.state, row.value) == ("tilt_exceeded", "major", "active", 6)
    assert row.device_id == "pole-1" and row.agent_id == "agent-1"
    assert row.raised_at.replace(tzinfo=UTC) == datetime.fromtimestamp((T0 + 1000) / 1000, UTC)
    [event] = rig.events()
    assert event["transition"] == "raised" and event["alarm_id"] == row.alarm_id

    for at in (2, 3, 4):  # still over the threshold: no second alarm
        await rig.reading(at, tilt=7 + at)
    assert len(await rig.rows()) == 1 and rig.events() == []

    await rig.reading(5, tilt=5)  # "> 5" no longer holds
    [row] = await rig.rows()
    assert row.state == "cleared" and row.cleared_at is not None
    assert [e["transition"] for e in rig.events()] == ["cleared"]

    await rig.reading(6, tilt=9)  # a new episode is a new alarm
    rows = await rig.rows()
    assert [r.state for r in rows] == ["active", "cleared"]
    assert rows[0].alarm_id != rows[1].alarm_id


async def test_duration_counts_edge_time_from_the_first_reading_that_holds(rig: Rig) -> None:
    await rig.reading(0, pm25=80)
    await rig.reading(300, pm25=90)
    await rig.reading(599.999, pm25=95)
    assert await rig.rows() == []
    await rig.reading(600, pm25=85)
    [row] = await rig.rows()
    assert (row.rule, row.severity, row.value) == ("pm25_high", "warning", 85)
    assert "for 600 s" in row.message


async def test_a_dip_resets_the_duration(rig: Rig) -> None:
    await rig.reading(0, pm25=80)
    await rig.reading(300, pm25=70)  # dip: the timer starts again at the next reading over 75
    await rig.reading(400, pm25=80)
    await rig.reading(900, pm25=80)  # 600 s after the first reading, but only 500 s unbroken
    assert await rig.rows() == []
    await rig.reading(1000, pm25=80)
    [row] = await rig.rows()
    assert row.raised_at.replace(tzinfo=UTC) == datetime.fromtimestamp((T0 + 1_000_000) / 1000, UTC)


async def test_a_reading_without_the_point_uses_its_last_known_value(rig: Rig) -> None:
    # the edge sends only what changed (deadband): pm25 stays 80 while only power moves
    await rig.reading(0, pm25=80, power=100)
    await rig.reading(300, power=101)
    assert await rig.rows() == []
    await rig.reading(600, power=102)
    [row] = await rig.rows()
    assert row.rule == "pm25_high"


async def test_boolean_rules(rig: Rig) -> None:
    await rig.reading(0, door_open=False, one_key_alarm=False)
    assert await rig.rows() == []
    await rig.reading(1, door_open=True)
    await rig.reading(2, one_key_alarm=True)
    rows = {r.rule: r for r in await rig.rows()}
    assert rows["door_open"].severity == "minor" and rows["door_open"].value is True
    assert rows["one_key_alarm"].severity == "critical"
    await rig.reading(3, door_open=False)
    rows = {r.rule: r for r in await rig.rows()}
    assert rows["door_open"].state == "cleared" and rows["one_key_alarm"].state == "active"


async def test_older_readings_are_ignored(rig: Rig) -> None:
    await rig.reading(10, tilt=9)
    await rig.reading(5, tilt=0)  # a late replay must not clear the alarm
    [row] = await rig.rows()
    assert row.state == "active"
    assert rig.engine.stats["stale_readings"] == 1


async def test_devices_without_a_profile_are_skipped(rig: Rig) -> None:
    await rig.reading(0, device_id="meter-1", tilt=90)
    assert await rig.rows() == []


async def test_acknowledge_then_clear_keeps_the_acknowledgement(rig: Rig) -> None:
    await rig.reading(0, tilt=8)
    [row] = await rig.rows()
    rig.events()
    acked = await rig.engine.acknowledge(row.alarm_id, "op-anna", "crew on the way")
    assert acked.state == "acknowledged" and acked.acknowledged_by == "op-anna"
    assert acked.acknowledged_at is not None
    assert acked.acknowledged_at.replace(tzinfo=UTC) == rig.clock.now
    await rig.reading(1, tilt=9)  # still holds: nothing new
    await rig.reading(2, tilt=1)
    [row] = await rig.rows()
    assert row.state == "cleared"
    assert (row.acknowledged_by, row.acknowledged_note) == ("op-anna", "crew on the way")
    assert [e["transition"] for e in rig.events()] == ["acknowledged", "cleared"]
    with pytest.raises(AlarmAlreadyAcknowledged):
        await rig.engine.acknowledge(row.alarm_id, "op-ben", "again")


async def test_acknowledge_after_clear(rig: Rig) -> None:
    await rig.reading(0, door_open=True)
    await rig.reading(1, door_open=False)
    [row] = await rig.rows()
    assert row.state == "cleared" and row.acknowledged_at is None
    rig.clock.now += timedelta(minutes=5)
    acked = await rig.engine.acknowledge(row.alarm_id, "op-anna", "checked, closed")
    assert acked.state == "cleared" and acked.acknowledged_by == "op-anna"
    with pytest.raises(AlarmAlreadyAcknowledged):
        await rig.engine.acknowledge(row.alarm_id, "op-anna", "twice")
    with pytest.raises(AlarmNotFound):
        await rig.engine.acknowledge("nope", "op-anna", "")


async def test_offline_alarms(rig: Rig) -> None:
    await rig.status("device", "offline", "pole-1")
    await rig.status("device", "offline", "pole-1")  # no duplicate
    await rig.status("agent", "offline")
    rows = {r.rule: r for r in await rig.rows()}
    assert set(rows) == {"device_offline", "agent_offline"}
    assert {r.severity for r in rows.values()} == {"major"}
    assert rows["agent_offline"].device_id is None
    assert rows["device_offline"].device_id == "pole-1"
    await rig.status("device", "online", "pole-1")
    await rig.status("agent", "online")
    assert {r.state for r in await rig.rows()} == {"cleared"}
    await rig.engine.handle(HubEvent(kind="status", ts_ms=T0, data={"scope": "moon"}))
    assert rig.engine.stats["malformed_events"] == 1


async def test_restart_neither_duplicates_nor_forgets(tmp_path: Path) -> None:
    first = Rig(tmp_path / "registry.db")
    await first.start()
    await first.reading(0, tilt=8, pm25=80)
    await first.reading(300, pm25=80)
    await first.status("device", "offline", "pole-1")
    await first.close()

    second = Rig(tmp_path / "registry.db")
    await second.start()
    try:
        await second.reading(400, tilt=9, pm25=80)  # tilt alarm already open: no duplicate
        assert sorted(r.rule for r in await second.rows()) == ["device_offline", "tilt_exceeded"]
        await second.reading(600, pm25=80)  # the pm25 timer kept running across the restart
        await second.reading(601, tilt=0)  # ... and the reloaded tilt alarm clears
        await second.status("device", "online", "pole-1")
        rows = {r.rule: r for r in await second.rows()}
        assert set(rows) == {"tilt_exceeded", "pm25_high", "device_offline"}
        assert rows["pm25_high"].state == "active"
        assert rows["tilt_exceeded"].state == "cleared"
        assert rows["device_offline"].state == "cleared"
    finally:
        await second.close()


async def test_after_a_restart_older_replayed_readings_do_not_clear(tmp_path: Path) -> None:
    first = Rig(tmp_path / "registry.db")
    await first.start()
    await first.reading(100, tilt=8)
    await first.close()
    second = Rig(tmp_path / "registry.db")
    await second.start()
    try:
        await second.reading(50, tilt=0)  # the agent replays its buffer from before the alarm
        assert [r.state for r in await second.rows()] == ["active"]
        await second.reading(150, tilt=0)
        assert [r.state for r in await second.rows()] == ["cleared"]
    finally:
        await second.close()


async def test_an_alarm_whose_rule_left_the_profile_is_cleared_at_start(tmp_path: Path) -> None:
    first = Rig(tmp_path / "registry.db")
    await first.start()
    await first.reading(0, tilt=8, door_open=True)
    await first.close()
    slimmer = POLE.model_copy(
        update={"alarms": {k: v for k, v in POLE.alarms.items() if k != "tilt_exceeded"}}
    )
    second = Rig(tmp_path / "registry.db", lambda _: slimmer)
    await second.start()
    try:
        rows = {r.rule: r for r in await second.rows()}
        assert rows["tilt_exceeded"].state == "cleared"
        assert rows["door_open"].state == "active"
        assert [e["transition"] for e in second.events()] == ["cleared"]
    finally:
        await second.close()


async def test_restart_forgets_a_timer_that_was_reset(tmp_path: Path) -> None:
    first = Rig(tmp_path / "registry.db")
    await first.start()
    await first.reading(0, pm25=80)
    await first.reading(100, pm25=10)
    await first.close()
    second = Rig(tmp_path / "registry.db")
    await second.start()
    try:
        await second.reading(200, pm25=80)
        await second.reading(700, pm25=80)  # only 500 s since it held again
        assert await second.rows() == []
    finally:
        await second.close()


async def test_listing_pages_with_a_cursor_and_filters(rig: Rig) -> None:
    for i in range(5):
        await rig.reading(i * 10, device_id=f"pole-{i}", tilt=9, door_open=i % 2 == 0)
    await rig.reading(100, device_id="pole-0", tilt=0)
    seen: list[AlarmRow] = []
    cursor = None
    while True:
        page = await rig.engine.store.page(limit=3, cursor=cursor)
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 8 and len({r.alarm_id for r in seen}) == 8
    assert [r.raised_at for r in seen] == sorted((r.raised_at for r in seen), reverse=True)
    assert len(await rig.rows(severities=["minor"])) == 3
    assert len(await rig.rows(states=["cleared"])) == 1
    assert len(await rig.rows(device_id="pole-0")) == 2
    with pytest.raises(InvalidCursor):
        await rig.engine.store.page(cursor="%%%")


async def test_run_consumes_the_bus(rig: Rig) -> None:
    task = asyncio.create_task(rig.engine.run())
    try:
        rig.bus.publish(
            HubEvent(
                kind="telemetry",
                ts_ms=T0,
                data={"profile": "smart_pole", "values": {"one_key_alarm": True}},
                device_id="pole-1",
                agent_id="agent-1",
            )
        )
        event = await asyncio.wait_for(rig.alarms.queue.get(), timeout=5)
        assert event.kind == "alarm" and event.data["rule"] == "one_key_alarm"
        assert event.device_id == "pole-1" and event.ts_ms == T0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
