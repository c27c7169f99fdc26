"""Hub ingest: valid readings stored, bad ones dead-lettered with the reason, loop never dies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_hub.dead_letters.store import DeadLetterStore
from cloud_hub.events.bus import EventBus
from cloud_hub.ingest.messages import Accepted, Ingest
from cloud_hub.provisioning.models import AgentCredentialRow
from cloud_hub.registry import Registry, utcnow
from cloud_hub.storage import SqliteStore
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import AgentState, Channel, DeviceInfo, encode, topic

pytestmark = pytest.mark.unit


@pytest.fixture
async def ingest(tmp_path: Path):
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    store = SqliteStore(SqliteStoreSettings(path=tmp_path / "telemetry.db"))
    await registry.start()
    await store.start()
    ingest = Ingest(registry, EventBus(), DeadLetterStore(registry), min_ts_ms=0)  # tiny ts
    ingest.store = store  # type: ignore[attr-defined]  # where _handle() writes, as the hub's writer does
    birth = AgentState(
        agent_id="a1", state="online", devices=[DeviceInfo(device_id="p1", profile="smart_pole")]
    )
    await ingest.handle(topic("a1", Channel.STATE), encode(birth))
    yield ingest
    await store.close()
    await registry.close()


async def _handle(ingest: Ingest, name: str, payload: bytes) -> Accepted:
    """What the hub does with a message: validate, then store the accepted readings."""
    accepted = await ingest.handle(name, payload)
    if accepted.readings:
        await ingest.store.write(accepted.readings)  # type: ignore[attr-defined]
        ingest.stored(accepted.readings)
    return accepted


async def _reasons(ingest: Ingest) -> list[str]:
    """The reasons of the dead letters kept, newest first."""
    await ingest.dead_letters.flush()
    return [row.reason for row in (await ingest.dead_letters.page(limit=1000)).items]


def _batch(*readings: dict[str, object], agent_id: str = "a1") -> bytes:
    return json.dumps({"v": 1, "agent_id": agent_id, "seq": 1, "readings": list(readings)}).encode()


async def test_a_last_will_changes_only_the_state(ingest: Ingest) -> None:
    """The Last Will states neither version nor devices: what the hub knows of them stays."""
    name = topic("a1", Channel.STATE)
    birth = AgentState(
        agent_id="a1",
        state="online",
        software_version="1.2.3",
        devices=[DeviceInfo(device_id="p1", profile="smart_pole")],
    )
    await ingest.handle(name, encode(birth))
    await ingest.handle(name, b'{"v": 1, "agent_id": "a1", "state": "offline"}')
    agent = await ingest.registry.get_agent("a1")
    assert agent is not None
    assert (agent.state, agent.software_version) == ("offline", "1.2.3")
    device = await ingest.registry.get_device("p1")
    assert device is not None and device.agent_id == "a1"
    assert ingest.profile_of("p1") is not None
    assert await _reasons(ingest) == []


async def test_birth_registers_devices(ingest: Ingest) -> None:
    device = await ingest.registry.get_device("p1")
    assert device is not None and device.agent_id == "a1" and device.profile == "smart_pole"


async def test_good_readings_survive_bad_neighbours(ingest: Ingest) -> None:
    payload = _batch(
        {"device_id": "p1", "ts": 1000, "values": {"power": 60, "lamp_on": True, "dimming": 40}},
        {"device_id": "p1", "ts": 2000, "values": {"power": "lots"}},  # wrong type
        {"device_id": "p1", "ts": 3000, "values": {"warp_drive": 1.0}},  # unknown point
        {"device_id": "ghost", "ts": 4000, "values": {"power": 1.0}},  # unknown device
        {"device_id": "p1", "ts": "noon", "values": {"power": 1.0}},  # malformed
        {"device_id": "p1", "ts": 5000, "values": {"dimming": 41.5}},  # int point, fraction
        {"device_id": "p1", "ts": 6000, "values": {"power": 61.5}},
    )
    await _handle(ingest, topic("a1", Channel.TELEMETRY), payload)
    assert ingest.stats["readings"] == 2
    assert ingest.stats["dead_letters"] == 5
    reasons = " | ".join(await _reasons(ingest))
    for expected in [
        "point 'power' expects a uint32 value, got 'lots'",
        "point 'warp_drive' is not in profile 'smart_pole'",
        "device 'ghost' is not registered to agent 'a1'",
        "reading 4",
        "point 'dimming' expects a uint16 value, got 41.5",
    ]:
        assert expected in reasons
    latest = await ingest.store.latest("p1", "smart_pole", ["power", "lamp_on", "dimming"])
    assert latest["power"].value == 61.5 and latest["power"].ts_ms == 6000
    assert latest["dimming"].value == 40


async def test_a_device_of_another_agent_is_refused(ingest: Ingest) -> None:
    await _handle(
        ingest,
        topic("a2", Channel.TELEMETRY),
        _batch({"device_id": "p1", "ts": 1, "values": {"power": 1.0}}, agent_id="a2"),
    )
    assert ingest.stats["readings"] == 0
    assert "not registered to agent 'a2'" in (await _reasons(ingest))[0]


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("iot/v1/a1/telemetry", b"not json"),
        (
            "iot/v1/a1/telemetry",
            _batch({"device_id": "p1", "ts": 1, "values": {"power": 1.0}}, agent_id="a9"),
        ),
        ("iot/v1/a1/state", b'{"v": 1}'),
        ("iot/v1/a1/command-results", b"{}"),
        ("elsewhere/x", b"{}"),
        ("iot/v1/a1/commands", b"{}"),
    ],
)
async def test_malformed_messages_are_dead_lettered(
    ingest: Ingest, name: str, payload: bytes
) -> None:
    accepted = await _handle(ingest, name, payload)
    assert accepted.readings == [] and accepted.command_result is None
    assert ingest.stats["dead_letters"] == 1


async def test_replayed_reading_is_stored_once(ingest: Ingest) -> None:
    payload = _batch({"device_id": "p1", "ts": 1000, "values": {"power": 60.0}})
    await _handle(ingest, topic("a1", Channel.TELEMETRY), payload)
    await _handle(ingest, topic("a1", Channel.TELEMETRY), payload)
    cursor = await ingest.store.db.execute("SELECT COUNT(*) FROM readings")  # type: ignore[attr-defined]
    assert (await cursor.fetchone())[0] == 1


async def test_read_times_outside_the_window_are_refused_one_by_one(ingest: Ingest) -> None:
    ingest.min_ts_ms, ingest.max_ahead_ms = 946_684_800_000, 60_000  # 2000-01-01, 1 min
    now = time.time_ns() // 1_000_000
    payload = _batch(
        {"device_id": "p1", "ts": 946_684_799_999, "values": {"power": 1.0}},  # 1999
        {"device_id": "p1", "ts": now, "values": {"power": 2.0}},
        {"device_id": "p1", "ts": now + 120_000, "values": {"power": 3.0}},  # 2 min ahead
    )
    with ingest.refusals(record_only=True) as refusals:
        accepted = await ingest.handle("iot/v1/a1/telemetry", payload)
    assert [r.values for r in accepted.readings] == [{"power": 2.0}]
    assert accepted.batch == ("a1", 1)
    assert len(refusals.reasons) == 2
    assert "before 2000-01-01" in refusals.reasons[0]
    assert "ahead of the hub's clock" in refusals.reasons[1]


async def test_a_revoked_agent_is_cut_off_and_its_retained_birth_ignored(ingest: Ingest) -> None:
    """Revocation: the broker drops the agent without its Last Will, so the hub records it
    offline itself (a status event the alarm engine raises ``agent_offline`` from); the
    broker's retained copy of its last birth, read again at a hub restart, changes nothing."""
    subscription = ingest.events.subscribe(lambda e: e.kind == "status")
    async with ingest.registry.session.begin() as db:
        db.add(
            AgentCredentialRow(
                agent_id="a1", username="agent-a1", created_at=utcnow(), revoked_at=utcnow()
            )
        )
    await ingest.cut_off("a1", "revoked")
    agent = await ingest.registry.get_agent("a1")
    assert agent is not None and agent.state == "offline"
    event = subscription.queue.get_nowait()
    assert (event.agent_id, event.data.get("state"), event.data.get("reason")) == (
        "a1",
        "offline",
        "revoked",
    )
    birth = AgentState(
        agent_id="a1", state="online", devices=[DeviceInfo(device_id="p1", profile="smart_pole")]
    )
    await ingest.handle(topic("a1", Channel.STATE), encode(birth))
    agent = await ingest.registry.get_agent("a1")
    assert agent is not None and agent.state == "offline"
    assert ingest.stats["revoked_births"] == 1 and subscription.queue.empty()
