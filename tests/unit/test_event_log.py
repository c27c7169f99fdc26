"""The durable event log on a SQLite registry: keys, once-per-fact appends, order, flush, prune.

Two :class:`EventLog` instances on one registry stand for two hub processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud_hub.dead_letters.store import DeadLetterStore
from cloud_hub.events.bus import EventBus, HubEvent
from cloud_hub.events.log import EventLog, EventLogSettings, event_key
from cloud_hub.events.log_models import HubEventRow
from cloud_hub.ingest.messages import Ingest
from cloud_hub.registry import Registry, utcnow
from device_profiles.wire import AgentState, Channel, DeviceInfo, encode, topic

pytestmark = pytest.mark.unit


def status(state: str, ts_ms: int, device_id: str | None = None) -> HubEvent:
    scope = "device" if device_id else "agent"
    return HubEvent("status", ts_ms, {"scope": scope, "state": state}, device_id, "agent-1")


def command(command_id: str, status_: str) -> HubEvent:
    data = {"command_id": command_id, "name": "lamp_on", "status": status_, "detail": ""}
    return HubEvent("command", 1_000, data, "pole-1", "agent-1")


def alarm(alarm_id: str, transition: str) -> HubEvent:
    data = {"alarm_id": alarm_id, "rule": "tilt_exceeded", "transition": transition}
    return HubEvent("alarm", 1_000, data, "pole-1", "agent-1")


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    yield registry
    await registry.close()


async def _count(registry: Registry) -> int:
    async with registry.session() as db:
        return int(await db.scalar(select(func.count()).select_from(HubEventRow)) or 0)


def test_keys_name_the_fact() -> None:
    assert event_key(status("offline", 5, "pole-1")) == "status:device:agent-1:pole-1:offline:5"
    assert event_key(status("online", 5)) == "status:agent:agent-1:-:online:5"
    assert event_key(command("c1", "sent")) == "command:c1:sent"
    assert event_key(alarm("a1", "raised")) == "alarm:a1:raised"
    # what differs between two processes' copies of a fact is not part of the key
    late = HubEvent("command", 9_999, {**command("c1", "sent").data, "detail": "x"})
    assert event_key(late) == "command:c1:sent"
    given = HubEvent("status", 7, {"scope": "agent", "state": "offline"}, key="mine")
    assert event_key(given) == "mine"
    with pytest.raises(ValueError, match="telemetry"):
        event_key(HubEvent("telemetry", 1, {"values": {}}))
    with pytest.raises(ValueError, match="alarm_id"):
        event_key(HubEvent("alarm", 1, {"transition": "raised"}))


async def test_the_same_fact_from_two_processes_is_stored_once(registry: Registry) -> None:
    one, two = EventLog(registry, EventBus()), EventLog(registry, EventBus())
    assert await one.append([status("online", 10), command("c1", "queued")]) == 2
    assert (
        await two.append([status("online", 10), command("c1", "queued"), alarm("a", "raised")]) == 1
    )
    assert await one.append([command("c1", "queued"), command("c1", "queued")]) == 0
    assert await _count(registry) == 3
    assert (one.stats["appended"], two.stats["appended"], two.stats["duplicates"]) == (2, 1, 2)
    events, scanned = await one.read(0)
    assert [e.key for e in events] == [
        "status:agent:agent-1:-:online:10",
        "command:c1:queued",
        "alarm:a:raised",
    ]
    assert [e.seq for e in events] == sorted(e.seq for e in events) and scanned == events[-1].seq
    # what a reader gets back is the event as published
    assert events[1].event.data == command("c1", "queued").data
    assert (events[1].event.kind, events[1].event.device_id) == ("command", "pole-1")


async def test_read_filters_kinds_and_says_how_far_it_scanned(registry: Registry) -> None:
    log = EventLog(registry, EventBus())
    await log.append([status("online", i) for i in range(5)] + [alarm("a", "raised")])
    head = await log.head()
    events, scanned = await log.read(0, kinds={"alarm"})
    assert [e.key for e in events] == ["alarm:a:raised"] and scanned == head
    events, scanned = await log.read(0, kinds={"command"})
    assert events == [] and scanned == head  # nothing wanted: a cursor may move to the head
    events, scanned = await log.read(0, limit=2)
    assert len(events) == 2 and scanned == events[-1].seq  # a full page: only that far
    assert await log.read(head) == ([], head)


async def test_events_reach_the_log_off_the_hot_path_and_close_flushes(registry: Registry) -> None:
    bus = EventBus()
    log = EventLog(registry, bus)
    await log.start()
    bus.publish(status("online", 1))
    bus.publish(HubEvent("telemetry", 1, {"values": {"tilt": 1}}, "pole-1", "agent-1"))
    bus.publish(command("c1", "queued"))
    assert await _count(registry) == 0  # publishing never waits on the database
    task = asyncio.create_task(log.run())
    signal = log.signal()
    await asyncio.wait_for(signal.wait(), 5)
    assert await _count(registry) == 2  # telemetry is not logged
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    bus.publish(alarm("a", "raised"))  # queued, never appended by run()
    await log.close()
    assert await _count(registry) == 3
    bus.publish(alarm("a", "cleared"))  # after close: not subscribed any more
    assert await _count(registry) == 3


async def test_a_full_queue_drops_the_oldest_and_counts(registry: Registry) -> None:
    bus = EventBus()
    log = EventLog(registry, bus, EventLogSettings(queue_size=2))
    await log.start()
    for i in range(5):
        bus.publish(command(f"c{i}", "queued"))
    assert log.dropped == 3
    await log.close()
    events, _ = await log.read(0)
    assert [e.key for e in events] == ["command:c3:queued", "command:c4:queued"]


async def test_prune_keeps_what_a_cursor_has_not_passed(registry: Registry) -> None:
    log = EventLog(registry, EventBus())
    await log.append([command(f"c{i}", "queued") for i in range(4)])
    events, _ = await log.read(0)
    cutoff = events[1].seq
    assert await log.prune(utcnow() - timedelta(days=1), cutoff) == 0  # not old enough
    assert await log.prune(utcnow() + timedelta(seconds=1), cutoff) == 2
    remaining, _ = await log.read(0)
    assert [e.seq for e in remaining] == [e.seq for e in events[2:]]
    await log.prune(utcnow() + timedelta(seconds=1), await log.head())
    await log.append([command("c9", "queued")])
    [after] = (await log.read(0))[0]
    assert after.seq > events[-1].seq  # a seq is never reused, even on an emptied table


async def test_an_agents_last_will_has_the_same_key_in_every_process(registry: Registry) -> None:
    """The Last Will carries no time: processes that saw the birth name it alike."""
    name = topic("agent-1", Channel.STATE)
    birth = AgentState(
        agent_id="agent-1",
        state="online",
        ts=1_790_000_000_000,
        devices=[DeviceInfo(device_id="pole-1", profile="smart_pole")],
    )
    will = AgentState(agent_id="agent-1", state="offline")
    keys: list[list[str]] = []
    for _ in range(2):  # two hub processes, each seeing both messages
        bus = EventBus()
        seen = bus.subscribe(lambda e: e.kind == "status")
        ingest = Ingest(registry, bus, DeadLetterStore(registry))
        await ingest.handle(name, encode(birth))
        await ingest.handle(name, encode(will))
        keys.append([event_key(seen.queue.get_nowait()) for _ in range(2)])
        await ingest.dead_letters.close()
    assert keys[0] == keys[1]
    assert keys[0][1] == "status:agent:agent-1:-:offline:after-1790000000000"
