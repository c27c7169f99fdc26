"""The on-disk outbox waits for the hub's stored acknowledgements: window, resend, restart."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from device_profiles.wire import Channel, DeviceEvent, Reading, TelemetryBatch
from edge_agent.outbox.memory import Outgoing
from edge_agent.outbox.spool import DiskOutbox

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def _reading(i: int) -> Reading:
    return Reading(device_id="d1", ts=T0 + i, values={"power": float(i)})


def _open(path: Path, **settings: Any) -> DiskOutbox:
    settings.setdefault("batch_max_delay_s", 0)
    settings.setdefault("batch_max_readings", 10)
    return DiskOutbox.open(path / "spool.db", "a1", **settings)


def _batch(item: Outgoing) -> TelemetryBatch:
    assert isinstance(item.message, TelemetryBatch)
    return item.message


async def _next(outbox: DiskOutbox, timeout: float = 5) -> Outgoing:
    return await asyncio.wait_for(outbox.next(), timeout)


async def test_a_sent_batch_stays_until_the_hub_confirms_it(tmp_path: Path) -> None:
    with _open(tmp_path) as outbox:
        for i in range(25):
            outbox.put_reading(_reading(i))
        seqs = []
        for _ in range(3):
            item = await _next(outbox)
            outbox.sent(item)
            seqs.append(_batch(item).seq)
        assert outbox.unconfirmed_batches == 3
        assert outbox.depth == 25  # nothing forgotten on the broker's PUBACK
        assert outbox.stored([seqs[1], 999]) == 1  # unknown seqs are ignored
        assert outbox.depth == 15
        assert outbox.stored([seqs[1]]) == 0  # a repeated acknowledgement changes nothing
        assert outbox.stored(seqs) == 2
        assert outbox.depth == 0
        assert outbox.unconfirmed_batches == 0


async def test_the_window_bounds_the_batches_waiting_for_confirmation(tmp_path: Path) -> None:
    with _open(tmp_path, window_batches=2) as outbox:
        for i in range(50):
            outbox.put_reading(_reading(i))
        first, second = await _next(outbox), None
        outbox.sent(first)
        second = await _next(outbox)
        outbox.sent(second)
        waiting = asyncio.ensure_future(outbox.next())
        await asyncio.sleep(0.05)  # (a pace: it must still be waiting)
        assert not waiting.done()
        outbox.stored([_batch(first).seq])
        third = await asyncio.wait_for(waiting, 5)
        assert _batch(third).seq == _batch(second).seq + 1


async def test_an_unconfirmed_batch_is_sent_again_with_its_seq_after_a_timeout(
    tmp_path: Path,
) -> None:
    with _open(tmp_path, window_batches=1, ack_timeout_s=0.1, ack_timeout_max_s=0.2) as outbox:
        for i in range(5):
            outbox.put_reading(_reading(i))
        item = await _next(outbox)
        outbox.sent(item)
        again = await _next(outbox)  # the window is full: the overdue batch comes back
        assert _batch(again).seq == _batch(item).seq
        assert [r.ts for r in _batch(again).readings] == [r.ts for r in _batch(item).readings]
        assert outbox.resent_batches == 1
        outbox.sent(again)
        outbox.stored([_batch(item).seq])
        assert outbox.depth == 0


async def test_rewind_sends_every_unconfirmed_batch_again_at_once(tmp_path: Path) -> None:
    with _open(tmp_path, ack_timeout_s=3600, ack_timeout_max_s=3600) as outbox:
        for i in range(20):
            outbox.put_reading(_reading(i))
        sent = []
        for _ in range(2):
            item = await _next(outbox)
            outbox.sent(item)
            sent.append(_batch(item).seq)
        outbox.rewind()  # the uplink reconnected
        again = [_batch(await _next(outbox)) for _ in range(1)]
        assert [b.seq for b in again] == sent[:1]


async def test_unconfirmed_batches_survive_a_restart_and_go_first(tmp_path: Path) -> None:
    with _open(tmp_path) as outbox:
        for i in range(15):
            outbox.put_reading(_reading(i))
        item = await _next(outbox)
        outbox.sent(item)
        before = _batch(item)
    with _open(tmp_path) as outbox:
        assert outbox.unconfirmed_batches == 1
        again = _batch(await _next(outbox))
        assert (again.seq, again.readings) == (before.seq, before.readings)
        outbox.sent(await outbox.next())
        newer = _batch(await _next(outbox))
        assert newer.seq > before.seq
        assert [r.ts - T0 for r in newer.readings] == list(range(10, 15))


async def test_the_cap_drops_unsent_readings_before_unconfirmed_batches(tmp_path: Path) -> None:
    with _open(
        tmp_path, max_bytes=256 * 1024, batch_max_readings=50, flush_max_readings=100
    ) as outbox:
        for i in range(50):
            outbox.put_reading(_reading(i))
        item = await _next(outbox)
        outbox.sent(item)
        for i in range(50, 20_000):
            outbox.put_reading(_reading(i))
        outbox.flush()
        assert outbox.dropped_readings > 0
        assert outbox.unconfirmed_batches == 1  # the oldest unsent went first
        assert outbox.stored([_batch(item).seq]) == 1


def test_a_schema_1_spool_keeps_its_batch_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        """
        CREATE TABLE readings (id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL,
                               body BLOB NOT NULL);
        CREATE TABLE control (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,
                              kind TEXT NOT NULL, body BLOB NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        PRAGMA user_version = 1;
        """
    )
    for i in range(6):
        db.execute(
            "INSERT INTO readings (ts, body) VALUES (?, ?)",
            (T0 + i, _reading(i).model_dump_json().encode()),
        )
    db.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("batch_seq", 7), ("batch_lo", 1), ("batch_hi", 4), ("next_seq", 8)],
    )
    db.close()

    async def check() -> None:
        with _open(tmp_path) as outbox:
            assert outbox.depth == 6
            first = _batch(await _next(outbox))
            assert first.seq == 7
            assert [r.ts - T0 for r in first.readings] == [0, 1, 2, 3]
            outbox.ack(await outbox.next())
            second = _batch(await _next(outbox))
            assert (second.seq, [r.ts - T0 for r in second.readings]) == (8, [4, 5])

    asyncio.run(check())


async def test_a_control_message_goes_out_while_the_window_is_full(tmp_path: Path) -> None:
    with _open(tmp_path, window_batches=1, ack_timeout_s=3600, ack_timeout_max_s=3600) as outbox:
        for i in range(30):
            outbox.put_reading(_reading(i))
        outbox.sent(await _next(outbox))
        waiting = asyncio.ensure_future(outbox.next())
        for i in range(30, 60):  # readings do not free the window
            outbox.put_reading(_reading(i))
        await asyncio.sleep(0.05)  # (a pace: it must still be waiting)
        assert not waiting.done()
        event = DeviceEvent(agent_id="a1", device_id="d1", ts=T0, kind="offline")
        outbox.put_control(Channel.EVENTS, event)
        item = await asyncio.wait_for(waiting, 5)
        assert item.message == event
