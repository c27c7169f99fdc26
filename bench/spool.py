"""Store-and-forward throughput: the on-disk outbox next to the in-memory one (baseline).

Prints readings/s appended (``put_reading``) and replayed (``next`` + ``ack`` until empty),
bytes per reading on disk, and how long a flush (a commit on the event loop) takes. No assertions;
bounded to well under 30 s.

    .venv/bin/python bench/spool.py [readings]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from device_profiles.wire import Reading
from edge_agent.outbox.memory import Outbox
from edge_agent.outbox.spool import DiskOutbox

T0 = 1_700_000_000_000


def readings(n: int) -> list[Reading]:
    values = {"power": 1.5, "voltage": 230.1, "current": 0.42, "lamp_on": True, "dim": 80}
    return [Reading(device_id=f"pole-{i % 20}", ts=T0 + i, values=values) for i in range(n)]


async def replay(outbox: Outbox | DiskOutbox) -> tuple[int, float]:
    count = 0
    start = time.perf_counter()
    while outbox.depth:
        item = await outbox.next()
        count += item.readings
        outbox.ack(item)
    return count, time.perf_counter() - start


async def bench_memory(data: list[Reading]) -> None:
    outbox = Outbox(agent_id="bench", max_readings=len(data), batch_max_delay_s=0)
    start = time.perf_counter()
    for reading in data:
        outbox.put_reading(reading)
    put_s = time.perf_counter() - start
    count, replay_s = await replay(outbox)
    print(
        f"memory   append {len(data) / put_s:>10,.0f}/s   replay {count / replay_s:>10,.0f}/s"
        f"   bytes/reading      -"
    )


async def bench_disk(data: list[Reading], directory: Path, synchronous: str) -> None:
    flushes: list[float] = []
    outbox = DiskOutbox(
        directory / f"spool-{synchronous}.db",
        "bench",
        max_bytes=1 << 30,
        batch_max_delay_s=0,
        synchronous=synchronous,  # type: ignore[arg-type]
    )
    flush = outbox.flush

    def timed_flush() -> int:
        t = time.perf_counter()
        committed = flush()
        if committed:
            flushes.append(time.perf_counter() - t)
        return committed

    outbox.flush = timed_flush  # type: ignore[method-assign]
    with outbox:
        start = time.perf_counter()
        for reading in data:
            outbox.put_reading(reading)
        outbox.flush()
        put_s = time.perf_counter() - start
        per_reading = outbox.bytes_used / len(data)
        count, replay_s = await replay(outbox)
    print(
        f"disk/{synchronous:<6} append {len(data) / put_s:>10,.0f}/s   replay {count / replay_s:>10,.0f}/s"
        f"   bytes/reading {per_reading:>6.0f}   flush ms median {median(flushes) * 1000:.2f}"
        f" max {max(flushes) * 1000:.1f} ({len(flushes)} flushes)"
    )


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    data = readings(n)
    print(f"{n:,} readings, batches of 500, flush groups of 1000")
    await bench_memory(data)
    with tempfile.TemporaryDirectory() as tmp:
        await bench_disk(data, Path(tmp), "NORMAL")
        await bench_disk(data[: n // 5], Path(tmp), "FULL")


if __name__ == "__main__":
    asyncio.run(main())
