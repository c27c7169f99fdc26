"""The on-disk outbox: order, acknowledgement, seq across restarts, byte cap, recovery, replay."""

from __future__ import annotations

import asyncio
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from device_profiles.wire import (
    Channel,
    CommandResult,
    DeviceEvent,
    Reading,
    TelemetryBatch,
)
from edge_agent.outbox.memory import Outbox, Outgoing
from edge_agent.outbox.spool import DiskOutbox, SpoolError

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def _reading(i: int, device: str = "d1") -> Reading:
    return Reading(device_id=device, ts=T0 + i, values={"power": float(i), "on": i % 2 == 0})


def _event(i: int) -> DeviceEvent:
    return DeviceEvent(agent_id="a1", device_id="d1", ts=T0 + i, kind="offline", detail=f"#{i}")


def _open(path: Path, **settings: Any) -> DiskOutbox:
    settings.setdefault("batch_max_delay_s", 0)
    return DiskOutbox.open(path / "spool.db", "a1", **settings)


def _batch(item: Outgoing) -> TelemetryBatch:
    assert isinstance(item.message, TelemetryBatch)
    return item.message


def _times(item: Outgoing) -> list[int]:
    return [r.ts - T0 for r in _batch(item).readings]


async def _drain(outbox: DiskOutbox) -> list[Outgoing]:
    items = []
    while outbox.depth or outbox.metrics().control_waiting:
        item = await asyncio.wait_for(outbox.next(), 5)
        outbox.ack(item)
        items.append(item)
    return items


async def test_readings_are_batched_in_order_with_growing_seq(tmp_path: Path) -> None:
    with _open(tmp_path, batch_max_readings=3) as outbox:
        for i in range(5):
            outbox.put_reading(_reading(i))
        items = await _drain(outbox)
        outbox.put_reading(_reading(5))
        items += await _drain(outbox)
    assert [_times(item) for item in items] == [[0, 1, 2], [3, 4], [5]]
    assert [_batch(item).seq for item in items] == [0, 1, 2]
    assert [item.readings for item in items] == [3, 2, 1]
    assert items[0].message == TelemetryBatch(
        agent_id="a1", seq=0, readings=[_reading(0), _reading(1), _reading(2)]
    )


async def test_unacked_batch_is_returned_again_and_removed_only_on_ack(tmp_path: Path) -> None:
    with _open(tmp_path) as outbox:
        outbox.put_reading(_reading(1))
        first = await outbox.next()
        outbox.put_reading(_reading(2))
        assert await outbox.next() is first  # the publish failed: same batch, same seq
        assert outbox.depth == 2
        outbox.ack(first)
        assert outbox.depth == 1
        second = await outbox.next()
        assert (_batch(second).seq, _times(second)) == (1, [2])
        outbox.ack(first)  # a stale ack changes nothing
        assert outbox.depth == 1


async def test_unacked_batch_survives_a_restart_with_the_same_seq(tmp_path: Path) -> None:
    with _open(tmp_path, batch_max_readings=2) as outbox:
        for i in range(4):
            outbox.put_reading(_reading(i))
        outbox.ack(await outbox.next())
        handed = await outbox.next()  # published, PUBACK never came; then the agent stopped
    with _open(tmp_path, batch_max_readings=2) as outbox:
        again = await outbox.next()
        assert again.message == handed.message
        assert (_batch(again).seq, _times(again)) == (1, [2, 3])
        outbox.ack(again)
        outbox.put_reading(_reading(9))
        rest = await _drain(outbox)
    assert [(_batch(item).seq, _times(item)) for item in rest] == [(2, [9])]  # seq grows


async def test_seq_continues_after_reopen(tmp_path: Path) -> None:
    for run in range(3):
        with _open(tmp_path) as outbox:
            outbox.put_reading(_reading(run))
            items = await _drain(outbox)
        assert [_batch(item).seq for item in items] == [run]


async def test_readings_put_before_close_are_kept(tmp_path: Path) -> None:
    with _open(tmp_path, flush_interval_s=3600) as outbox:
        for i in range(10):
            outbox.put_reading(_reading(i))
        assert outbox.backlog_readings == 0 and outbox.depth == 10  # not flushed yet
    with _open(tmp_path) as outbox:
        assert outbox.depth == 10
        assert outbox.oldest_ts == T0
        items = await _drain(outbox)
    assert [t for item in items for t in _times(item)] == list(range(10))


async def test_flush_happens_within_the_flush_interval(tmp_path: Path) -> None:
    flushed = asyncio.Event()
    with _open(tmp_path, flush_interval_s=0.01, on_flush=lambda n: flushed.set()) as outbox:
        outbox.put_reading(_reading(1))
        assert outbox.backlog_readings == 0
        await asyncio.wait_for(flushed.wait(), 5)
        assert (outbox.backlog_readings, outbox.flushed_readings) == (1, 1)


async def test_a_full_flush_group_is_committed_at_once(tmp_path: Path) -> None:
    counts: list[int] = []
    with _open(tmp_path, flush_interval_s=3600, flush_max_readings=4, on_flush=counts.append) as o:
        for i in range(9):
            o.put_reading(_reading(i))
        assert (counts, o.backlog_readings, o.depth) == ([4, 8], 8, 9)


async def test_control_messages_go_first_and_survive_a_restart(tmp_path: Path) -> None:
    result = CommandResult(command_id="c1", device_id="d1", status="succeeded", ts=T0)
    with _open(tmp_path) as outbox:
        outbox.put_reading(_reading(0))
        outbox.put_control(Channel.EVENTS, _event(1))
        outbox.put_control(Channel.COMMAND_RESULTS, result)
    with _open(tmp_path) as outbox:
        items = await _drain(outbox)
    assert [(i.channel, i.message) for i in items[:2]] == [
        (Channel.EVENTS, _event(1)),
        (Channel.COMMAND_RESULTS, result),
    ]
    assert _times(items[2]) == [0]


async def test_unknown_control_model_is_refused_unless_registered(tmp_path: Path) -> None:
    class Alarm(DeviceEvent):
        pass

    alarm = Alarm(agent_id="a1", device_id="d1", ts=T0, kind="error")
    with _open(tmp_path) as outbox, pytest.raises(SpoolError, match="control_models"):
        outbox.put_control(Channel.EVENTS, alarm)
    with _open(tmp_path, control_models=[Alarm]) as outbox:
        outbox.put_control(Channel.EVENTS, alarm)
        item = await outbox.next()
    assert type(item.message) is Alarm and item.message == alarm


async def test_an_unreadable_stored_message_is_deleted_and_counted(tmp_path: Path) -> None:
    class Alarm(DeviceEvent):
        pass

    with _open(tmp_path, control_models=[Alarm]) as outbox:
        outbox.put_control(
            Channel.EVENTS, Alarm(agent_id="a1", device_id="d1", ts=T0, kind="error")
        )
        outbox.put_control(Channel.EVENTS, _event(1))
        for i in range(3):
            outbox.put_reading(_reading(i))
    with sqlite3.connect(tmp_path / "spool.db") as db:
        db.execute("UPDATE readings SET body = '{\"ts\": -1}' WHERE ts = ?", (T0 + 1,))
    db.close()
    with capture_logs() as logs, _open(tmp_path) as outbox:  # Alarm is not known any more
        items = await _drain(outbox)
        assert (outbox.metrics().corrupt_control, outbox.metrics().corrupt_readings) == (1, 1)
    assert [item.message for item in items[:1]] == [_event(1)]
    assert [_times(item) for item in items[1:]] == [[0, 2]]
    assert {e["event"] for e in logs if e["log_level"] == "error"} == {
        "unreadable control message in the spool deleted",
        "unreadable readings in the spool deleted",
    }


async def test_byte_cap_drops_oldest_telemetry_and_never_control(tmp_path: Path) -> None:
    cap = 256 * 1024
    with _open(tmp_path, max_bytes=cap, batch_max_readings=100, flush_max_readings=200) as o:
        o.put_control(Channel.EVENTS, _event(-1))
        for i in range(20_000):
            o.put_reading(_reading(i))
            if i % 5_000 == 0:
                o.put_control(Channel.EVENTS, _event(i))
        o.flush()
        assert o.file_bytes <= cap
        assert o.dropped_readings > 15_000
        kept = o.depth
        assert kept + o.dropped_readings == 20_000
    with _open(tmp_path, max_bytes=cap, batch_max_readings=10_000) as o:
        assert o.dropped_readings + kept == 20_000  # the count is kept in the file
        items = await _drain(o)
    assert [i.message for i in items[:5]] == [_event(i) for i in (-1, 0, 5_000, 10_000, 15_000)]
    times = [t for item in items[5:] for t in _times(item)]
    assert times == list(range(20_000 - kept, 20_000))  # the newest, in order


async def test_control_messages_may_exceed_the_cap_and_are_counted(tmp_path: Path) -> None:
    cap = 256 * 1024
    big = "x" * 4000
    with capture_logs() as logs, _open(tmp_path, max_bytes=cap) as o:
        o.put_reading(_reading(0))
        for i in range(100):
            o.put_control(Channel.EVENTS, _event(i).model_copy(update={"detail": big}))
        assert o.metrics().control_waiting == 100
        assert o.dropped_readings == 1
        assert o.control_over_cap == 1  # counted once per episode, logged once
        assert o.file_bytes > cap
    assert sum(e["event"] == "spool over its cap with nothing left to drop" for e in logs) == 1


async def test_cap_never_cuts_the_batch_being_published(tmp_path: Path) -> None:
    cap = 256 * 1024
    with _open(tmp_path, max_bytes=cap, batch_max_readings=50, flush_max_readings=100) as o:
        for i in range(200):
            o.put_reading(_reading(i))
        item = await o.next()
        before = _batch(item)
        for i in range(200, 20_000):
            o.put_reading(_reading(i))
        assert o.dropped_readings > 0
    with _open(tmp_path, max_bytes=cap) as o:
        assert (await o.next()).message == before


async def test_memory_and_file_stay_flat_over_a_long_outage(tmp_path: Path) -> None:
    cap = 1024 * 1024
    largest_file = 0
    with _open(tmp_path, max_bytes=cap, flush_max_readings=500) as outbox:
        for i in range(200_000):
            if i == 100_000:  # the cap is reached long before: trace the second half
                tracemalloc.start()
            outbox.put_reading(_reading(i))
            if i % 10_000 == 0:
                largest_file = max(largest_file, outbox.file_bytes)
        try:
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert largest_file <= cap and outbox.file_bytes <= cap
        assert outbox.bytes_used <= cap
        # 100,000 more readings held no more than one flush group (~0.2 MB peak)
        assert current < 256 * 1024 and peak < 1024 * 1024
        assert outbox.depth + outbox.dropped_readings == 200_000
        assert outbox.oldest_ts == T0 + outbox.dropped_readings


async def test_live_readings_alternate_with_the_backlog(tmp_path: Path) -> None:
    with _open(tmp_path, batch_max_readings=3) as outbox:
        for i in range(10):
            outbox.put_reading(_reading(i))  # left on disk by the previous run: the backlog
    with _open(tmp_path, batch_max_readings=3) as outbox:
        outbox.put_reading(_reading(100))
        outbox.put_reading(_reading(101))
        sent = []

        async def take() -> None:
            item = await outbox.next()
            outbox.ack(item)
            sent.append(_times(item))

        await take()  # live first
        await take()  # then the oldest backlog
        for i in range(102, 109):
            outbox.put_reading(_reading(i))
        await take()  # more than two batches live: the newest; 102-105 join the backlog
        while outbox.depth:
            await take()
    assert sent == [
        [100, 101],
        [0, 1, 2],
        [106, 107, 108],
        [3, 4, 5],
        [6, 7, 8],
        [9, 102, 103],
        [104, 105],
    ]


async def test_a_burst_of_up_to_two_batches_stays_in_order(tmp_path: Path) -> None:
    with _open(tmp_path, batch_max_readings=3) as outbox:
        for i in range(6):
            outbox.put_reading(_reading(i))
        items = await _drain(outbox)
    assert [_times(item) for item in items] == [[0, 1, 2], [3, 4, 5]]


async def test_steady_state_is_fifo_with_the_batching_delay(tmp_path: Path) -> None:
    with _open(tmp_path, batch_max_readings=4, batch_max_delay_s=0.05) as outbox:
        outbox.put_reading(_reading(0))
        waiting = asyncio.create_task(outbox.next())
        await asyncio.sleep(0)
        for i in range(1, 6):
            outbox.put_reading(_reading(i))
        first = await asyncio.wait_for(waiting, 5)
        outbox.ack(first)
        second = await outbox.next()
    assert (_times(first), _times(second)) == ([0, 1, 2, 3], [4, 5])


async def test_next_waits_for_data(tmp_path: Path) -> None:
    with _open(tmp_path) as outbox:
        waiting = asyncio.create_task(outbox.next())
        await asyncio.sleep(0)
        assert not waiting.done()
        outbox.put_control(Channel.EVENTS, _event(1))
        assert (await asyncio.wait_for(waiting, 5)).message == _event(1)


async def test_close_wakes_a_waiting_next_with_an_error(tmp_path: Path) -> None:
    outbox = _open(tmp_path)
    waiting = asyncio.create_task(outbox.next())
    await asyncio.sleep(0)
    outbox.close()
    with pytest.raises(SpoolError, match="closed"):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(SpoolError):
        outbox.put_reading(_reading(0))
    outbox.close()  # idempotent


def test_a_spool_in_use_is_refused(tmp_path: Path) -> None:
    with _open(tmp_path), pytest.raises(SpoolError, match="in use"):
        _open(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "broken page", "future schema"])
async def test_an_unreadable_spool_is_set_aside_and_counted(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "spool.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database at all" * 300)
    else:
        with _open(tmp_path) as outbox:
            for i in range(3000):
                outbox.put_reading(_reading(i))
        if damage == "broken page":
            data = bytearray(path.read_bytes())
            data[4096 * 3 : 4096 * 6] = b"\xa5" * (4096 * 3)
            path.write_bytes(bytes(data))
        else:
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA user_version = 99")
            db.close()
    with capture_logs() as logs, _open(tmp_path) as outbox:
        assert outbox.depth == 0
        assert outbox.corrupt_files_set_aside == 1
        outbox.put_reading(_reading(1))
        assert _times(await outbox.next()) == [1]
    aside = [p.name for p in sorted(tmp_path.iterdir()) if ".corrupt-" in p.name]  # noqa: ASYNC240
    assert len(aside) == 1 and aside[0].startswith("spool.db.corrupt-")
    (entry,) = [e for e in logs if e["event"].startswith("spool unreadable")]
    assert entry["log_level"] == "error" and entry["moved_to"].endswith(aside[0])
    with _open(tmp_path) as outbox:
        assert outbox.corrupt_files_set_aside == 1  # the count is kept


async def test_a_failing_disk_keeps_readings_in_memory_and_recovers(tmp_path: Path) -> None:
    with capture_logs() as logs, _open(tmp_path, flush_max_readings=10) as outbox:
        for i in range(10):
            outbox.put_reading(_reading(i))
        pages = outbox._db.execute("PRAGMA page_count").fetchone()[0]
        outbox._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        for i in range(10, 400):
            outbox.put_reading(_reading(i))
        assert outbox.flush() == 0
        stored = outbox.backlog_readings
        assert outbox.depth - stored == 200  # in memory, bounded to 20 flush groups
        assert outbox.dropped_readings == 400 - outbox.depth  # the oldest of them, counted
        outbox._db.execute(f"PRAGMA max_page_count = {pages * 1000}")  # space again
        assert outbox.flush() == 200
        items = await _drain(outbox)
    assert [t for item in items for t in _times(item)] == [*range(stored), *range(200, 400)]
    failures = [e for e in logs if e["event"].startswith("spool write failed")]
    assert [e["log_level"] for e in failures] == ["error"] + ["debug"] * (len(failures) - 1)
    assert any(e["event"] == "spool writable again" for e in logs)


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        _open(tmp_path, max_bytes=1000)
    with pytest.raises(ValueError, match="synchronous"):
        _open(tmp_path, synchronous="OFF")
    with pytest.raises(ValueError, match="batch_max_readings"):
        _open(tmp_path, batch_max_readings=20_000)
    with pytest.raises(ValueError, match="flush"):
        _open(tmp_path, flush_interval_s=0)


async def test_full_synchronous_mode_works(tmp_path: Path) -> None:
    with _open(tmp_path, synchronous="FULL") as outbox:
        outbox.put_reading(_reading(0))
        assert _times(await outbox.next()) == [0]


async def test_can_be_opened_off_the_event_loop(tmp_path: Path) -> None:
    outbox = await asyncio.to_thread(DiskOutbox.open, tmp_path / "spool.db", "a1")
    with outbox:
        outbox.put_control(Channel.EVENTS, _event(0))
        assert (await outbox.next()).message == _event(0)


async def test_same_interface_as_the_memory_outbox(tmp_path: Path) -> None:
    memory = Outbox(agent_id="a1", batch_max_delay_s=0)
    with _open(tmp_path) as disk:
        for outbox in (memory, disk):
            outbox.put_reading(_reading(0))
            outbox.put_control(Channel.EVENTS, _event(0))
            first = await outbox.next()
            outbox.ack(first)
            second = await outbox.next()
            outbox.ack(second)
            assert (first.message, _times(second), outbox.depth) == (_event(0), [0], 0)
            assert outbox.dropped_readings == 0
