"""A leader taking over: offline alarms brought in line with the states in the registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_hub.alarms import AlarmEngine
from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.registry import Registry
from device_profiles import load_builtin_profile
from device_profiles.wire import DeviceInfo

pytestmark = pytest.mark.unit

POLE = load_builtin_profile("smart_pole")


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    yield registry
    await registry.close()


async def test_states_recorded_while_no_engine_ran_are_acted_on(registry: Registry) -> None:
    pole = [DeviceInfo(device_id="pole-1", profile="smart_pole")]
    await registry.agent_state("gone", "online", "1", pole)
    await registry.agent_state("back", "online", "1", [])
    first = AlarmEngine(EventBus(), registry, lambda _: POLE)  # the old leader
    await first.start()
    await first.handle(
        HubEvent("status", 1_000, {"scope": "agent", "state": "offline"}, agent_id="back")
    )
    first.close()
    # the gap: ingest (in every process) records the states, no engine sees the events
    await registry.agent_state("gone", "offline", "", [])
    await registry.agent_state("back", "online", "1", [])
    await registry.device_status("pole-1", "offline")

    bus = EventBus()
    alarms = bus.subscribe(lambda e: e.kind == "alarm")
    second = AlarmEngine(bus, registry, lambda _: POLE)  # the new leader
    await second.start()
    await second.reconcile_offline()
    await second.reconcile_offline()  # twice: nothing new
    rows = {(r.rule, r.agent_id): r for r in (await second.store.page()).items}
    assert rows[("agent_offline", "gone")].state == "active"
    assert rows[("agent_offline", "back")].state == "cleared"
    assert rows[("device_offline", "gone")].device_id == "pole-1"
    assert len(rows) == 3
    transitions = []
    while not alarms.queue.empty():
        transitions.append(alarms.queue.get_nowait().data["transition"])
    assert sorted(transitions) == ["cleared", "raised", "raised"]
    second.close()
