"""The hub's disk spool: how fast the telemetry writer takes readings off the broker while the
store is down (fsynced appends), and how fast it drains them into InfluxDB once it is back.

    .venv/bin/python -m bench.hub_spool [readings]      # default 200,000; about 20 s

Runs :class:`cloud_hub.ingest.writer.TelemetryWriter` with its spool in this process against a private
InfluxDB 1.6 (``bench._servers``). Three figures, all readings of 10 values in messages of 100:
spooling (the store refuses every write: submit → fsynced in the spool → acknowledged), draining
(the store back: the spool written to InfluxDB, oldest first, until empty), and the baseline
measured in the same run, the same points written straight to InfluxDB by the same writer
without a spool. No assertions.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench._servers import console, machine, print_table, private_servers
from cloud_hub.ingest.spool import TelemetrySpool
from cloud_hub.ingest.writer import Pending, TelemetryWriter
from cloud_hub.storage import (
    InfluxV1Store,
    LatestValue,
    Series,
    SeriesQuery,
    StorageUnavailable,
    StoredReading,
)
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles import Value

T0 = 1_700_000_000_000
PER_MESSAGE = 100
VALUES: dict[str, Value] = {f"v{i}": float(i) + 0.5 for i in range(10)}


class Switch:
    """The real store behind an on/off switch (off: unavailable, as a stopped InfluxDB)."""

    def __init__(self, store: InfluxV1Store) -> None:
        self.store = store
        self.up = True

    async def start(self) -> None:
        await self.store.start()

    async def close(self) -> None:
        await self.store.close()

    async def write(self, readings: Sequence[StoredReading]) -> None:
        if not self.up:
            raise StorageUnavailable("switched off by the benchmark", retry_after=0.05)
        await self.store.write(readings)

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        return await self.store.latest(device_id, profile, points)

    async def query(self, query: SeriesQuery) -> list[Series]:
        return await self.store.query(query)


def messages(total: int, device_prefix: str) -> list[list[StoredReading]]:
    rows = [
        StoredReading(f"{device_prefix}-{i % 50}", "bench", "bench", T0 + i, VALUES)
        for i in range(total)
    ]
    return [rows[i : i + PER_MESSAGE] for i in range(0, total, PER_MESSAGE)]


async def push(writer: TelemetryWriter, batches: list[list[StoredReading]]) -> float:
    """Submit every message; seconds until the last is acknowledged."""
    acked = 0
    done = asyncio.Event()

    def ack() -> None:
        nonlocal acked
        acked += 1
        if acked == len(batches):
            done.set()

    start = time.perf_counter()
    for batch in batches:
        await writer.submit(Pending(batch, ack))
    await done.wait()
    return time.perf_counter() - start


async def main(total: int) -> None:
    console.print(f"bench.hub_spool on {machine()}")
    with private_servers(influxdb=True) as servers, tempfile.TemporaryDirectory() as tmp:
        assert servers.influxdb is not None
        store = Switch(InfluxV1Store(InfluxV1Settings(url=servers.influxdb.url, database="b")))
        await store.start()
        spool = TelemetrySpool(Path(tmp) / "spool.db", 1 << 34)
        writer = TelemetryWriter(store, lambda r: None, lambda r, why: None, spool=spool)
        await writer.open()
        task = asyncio.create_task(writer.run())
        try:
            direct_s = await push(writer, messages(total, "direct"))
            store.up = False
            spool_s = await push(writer, messages(total, "spooled"))
            size, chunks = spool.bytes, spool.chunks
            store.up = True
            start = time.perf_counter()
            while spool.chunks:  # noqa: ASYNC110 - polled as a user of the spool would
                await asyncio.sleep(0.01)
            drain_s = time.perf_counter() - start
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await writer.close()
            await store.close()
    print_table(
        "Hub telemetry spool (readings of 10 values, 100 a message)",
        ["path", "readings", "seconds", "readings/s", "vs direct"],
        [
            [
                "direct to InfluxDB (baseline)",
                f"{total:,}",
                f"{direct_s:.2f}",
                f"{total / direct_s:,.0f}",
                "1.00",
            ],
            [
                "store down: into the spool (fsync)",
                f"{total:,}",
                f"{spool_s:.2f}",
                f"{total / spool_s:,.0f}",
                f"{direct_s / spool_s:.2f}",
            ],
            [
                "store back: spool drained to InfluxDB",
                f"{total:,}",
                f"{drain_s:.2f}",
                f"{total / drain_s:,.0f}",
                f"{direct_s / drain_s:.2f}",
            ],
        ],
        f"spool file: {size / total:.0f} bytes a reading, {chunks:,} chunks; the writer batches up to 5,000 "
        "readings a store write or a spool chunk.",
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
