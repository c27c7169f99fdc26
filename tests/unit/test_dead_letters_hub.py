"""Dead letters in an in-process hub (SQLite, no broker): where they come from and whom they
name, and the replay's refusals (the store refusing again, a source that is no message)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiocoap
import pytest
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from cloud_hub.coap.ingress import CoapIngress
from cloud_hub.coap.models import provision_coap_secret
from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.dead_letters.models import DeadLetterRow
from cloud_hub.dead_letters.replay import NotReplayable, replay
from cloud_hub.dead_letters.store import agent_of
from cloud_hub.hub import Hub
from cloud_hub.settings import HubSettings
from cloud_hub.storage import LatestValue, StorageRejected, StoredReading
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import AgentState, Channel, DeviceInfo, encode, topic
from device_profiles.wire.coap import AUTH_OPTION, CF_JSON, auth_value, derive_key, request_mac

pytestmark = pytest.mark.unit

SECRET = "s3cret-s3cret-s3cret"


class RefusingStore:
    """A telemetry store that refuses every write for what it holds (as a 400 would)."""

    def __init__(self) -> None:
        self.refuse = True
        self.written: list[StoredReading] = []

    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def write(self, readings: Sequence[StoredReading]) -> None:
        if self.refuse:
            raise StorageRejected("field type conflict: power is a string here")
        self.written.extend(readings)

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        return {}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    settings = HubSettings(
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
    )
    hub = Hub(settings, store=RefusingStore())  # type: ignore[arg-type]  # the parts it uses
    await hub.start()
    writer = asyncio.create_task(hub.writer.run())
    try:
        yield hub
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await hub.close()


async def _kept(hub: Hub) -> list[DeadLetterRow]:
    """The dead letters in the registry, newest first."""
    await hub.dead_letters.flush()
    return (await hub.dead_letters.page(limit=1000)).items


def test_the_agent_is_read_from_contract_topics_only() -> None:
    assert agent_of("iot/v1/cab-1/telemetry") == "cab-1"
    assert agent_of("iot/v1/cab-1/config/reported") == "cab-1"
    assert agent_of("iot/v1/cab-1/nonsense") is None
    assert agent_of("iot/v1/bad id/telemetry") is None
    assert agent_of("coap:/t") is None
    assert agent_of("store:pole-1") is None


async def test_coap_refusals_name_the_agent_once_it_is_authenticated(hub: Hub) -> None:
    await provision_coap_secret(hub.registry, "nb-1", SECRET)
    ingress = CoapIngress(hub, CoapIngressSettings())
    anonymous = aiocoap.Message(code=Code.POST, payload=b"hello")
    assert (await ingress.handle("p", None, anonymous)).code == Code.UNAUTHORIZED

    reading = {"device_id": "m1", "ts": 1_760_000_000_000, "values": {"tilt": 1.0}}
    body = json.dumps({"v": 1, "agent_id": "nb-2", "seq": 1, "readings": [reading]}).encode()
    ts = int(time.time())
    mac = request_mac(derive_key(SECRET), "nb-1", "t", ts, CF_JSON, body)
    signed = aiocoap.Message(code=Code.POST, payload=body, content_format=CF_JSON)
    signed.opt.add_option(OpaqueOption(AUTH_OPTION, auth_value("nb-1", ts, mac)))
    assert (await ingress.handle("t", Channel.TELEMETRY, signed)).code == Code.FORBIDDEN

    other, unauthenticated = await _kept(hub)
    assert (unauthenticated.source, unauthenticated.agent_id) == ("coap:/p", None)
    assert unauthenticated.reason == "one auth option (65000) is required"
    assert unauthenticated.payload == b"hello"
    assert (other.source, other.agent_id) == (topic("nb-1", Channel.TELEMETRY), "nb-1")
    assert other.reason == "message of agent 'nb-2' sent by 'nb-1'"
    assert hub.ingest.stats["dead_letters"] == 2


async def test_a_replay_the_store_refuses_again_is_kept_with_the_reason(hub: Hub) -> None:
    birth = AgentState(
        agent_id="a1", state="online", devices=[DeviceInfo(device_id="p1", profile="smart_pole")]
    )
    await hub.ingest.handle(topic("a1", Channel.STATE), encode(birth))
    batch = {
        "v": 1,
        "agent_id": "a1",
        "seq": 3,
        "readings": [{"device_id": "p1", "ts": 1_760_000_000_000, "values": {"power": 5.0}}],
    }
    hub.ingest.dead_letter(
        topic("a1", Channel.TELEMETRY), "an operator's test", json.dumps(batch).encode()
    )
    [original] = await _kept(hub)

    result = await replay(hub, original.id)
    assert not result.accepted and not result.deleted
    assert result.readings_stored == 0
    assert result.reasons == ["field type conflict: power is a string here"]
    newest, kept = await _kept(hub)
    assert kept.id == original.id  # kept for another try
    assert (newest.source, newest.agent_id) == ("store:p1", "a1")
    assert newest.reason == result.reasons[0]

    hub.store.refuse = False  # type: ignore[attr-defined]  # the store is fixed
    result = await replay(hub, original.id)
    assert result.accepted and result.deleted and result.readings_stored == 1
    assert [r.ts_ms for r in hub.store.written] == [1_760_000_000_000]  # type: ignore[attr-defined]
    assert [row.id for row in await _kept(hub)] == [newest.id]


async def test_only_whole_messages_can_be_replayed(hub: Hub) -> None:
    hub.ingest.dead_letter("store:p1", "refused by the store", b"{'power': 'x'}", agent_id="a1")
    hub.ingest.dead_letter("coap:/p", "one auth option (65000) is required", b"")
    hub.ingest.dead_letter("iot/v1/a1/telemetry", "too big", b"{" * 5000)
    big, coap, store = await _kept(hub)
    for row, why in [
        (store, "its source 'store:p1' is not a message topic"),
        (coap, "its source 'coap:/p' is not a message topic"),
        (big, "only 4096 of its 5000 payload bytes were kept"),
    ]:
        with pytest.raises(NotReplayable, match=why):
            await replay(hub, row.id)
    assert len(await _kept(hub)) == 3
