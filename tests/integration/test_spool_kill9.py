"""The on-disk outbox survives ``kill -9``: what was reported flushed is there, once, in order.

A child process writes readings with known timestamps (``ts = T0 + i``) as fast as a busy
agent would, and prints ``FLUSHED n`` after each commit (``on_flush``). The test kills it with
SIGKILL mid-stream, reopens the spool and checks the documented bound: every reading up to the
last reported flush is there exactly once with its original timestamp, and at most one flush
group more (committed, but killed before it could say so).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from device_profiles.wire import TelemetryBatch
from edge_agent.outbox.spool import DiskOutbox

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000
FLUSH_MAX = 100
REPO = Path(__file__).resolve().parents[2]

CHILD = f"""
import asyncio, sys
from device_profiles.wire import Reading
from edge_agent.outbox.spool import DiskOutbox

async def consume(outbox, acks):
    for n in range(acks + 1):
        item = await outbox.next()
        batch = item.message
        times = " ".join(str(r.ts - {T0}) for r in batch.readings)
        print(f"HANDED {{batch.seq}} {{times}}", flush=True)
        if n == acks:
            await asyncio.Event().wait()  # the link broke: no PUBACK ever comes
        await asyncio.sleep(0.001)  # the publish and its PUBACK
        outbox.ack(item)
        print(f"ACKED {{batch.seq}}", flush=True)

async def main(path, acks):
    outbox = DiskOutbox(
        path, "a1", flush_interval_s=0.02, flush_max_readings={FLUSH_MAX},
        batch_max_readings=40, batch_max_delay_s=0,
        on_flush=lambda n: print(f"FLUSHED {{n}}", flush=True),
    )
    tasks = [asyncio.create_task(consume(outbox, acks))] if acks >= 0 else []
    i = 0
    while True:
        for _ in range(5):
            outbox.put_reading(Reading(device_id="d1", ts={T0} + i, values={{"i": i}}))
            i += 1
        await asyncio.sleep(0.0005)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@dataclass
class ChildOutput:
    flushed: list[int] = field(default_factory=list)
    handed: dict[int, list[int]] = field(default_factory=dict)  # seq -> ts - T0
    acked: list[int] = field(default_factory=list)

    def take(self, line: str) -> None:
        word, *args = line.split()
        numbers = [int(a) for a in args]
        if word == "FLUSHED":
            self.flushed.append(numbers[0])
        elif word == "HANDED":
            self.handed[numbers[0]] = numbers[1:]
        elif word == "ACKED":
            self.acked.append(numbers[0])


def run_and_kill(path: Path, acks: int, enough: Callable[[ChildOutput], bool]) -> ChildOutput:
    """Run the child until ``enough``, SIGKILL it, and return all it printed.

    The child writes readings; with ``acks >= 0`` it also publishes: it acknowledges ``acks``
    batches, then hands out one more that is never acknowledged.
    """
    out = ChildOutput()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", CHILD, str(path), str(acks)]
    with (
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as child,
        selectors.DefaultSelector() as selector,
    ):
        assert child.stdout is not None
        fd = child.stdout.fileno()
        selector.register(fd, selectors.EVENT_READ)
        buffer = b""
        deadline = time.monotonic() + 30
        killed = False
        while True:
            if not killed and enough(out):
                child.send_signal(signal.SIGKILL)
                killed = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                child.kill()
                pytest.fail(f"child reported too little in time: {out}")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:  # EOF: the child is gone and everything it printed is read
                break
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                if line.split(b" ", 1)[0] in (b"FLUSHED", b"HANDED", b"ACKED"):
                    out.take(line.decode())
        child.wait(10)
        stderr = child.stderr.read().decode() if child.stderr else ""
    assert child.returncode == -signal.SIGKILL, f"child failed: {stderr[-2000:]}"
    return out


async def drain(path: Path) -> list[TelemetryBatch]:
    batches = []
    with DiskOutbox(path, "a1", batch_max_readings=1000, batch_max_delay_s=0) as outbox:
        assert outbox.dropped_readings == 0
        while outbox.depth:
            item = await outbox.next()
            assert isinstance(item.message, TelemetryBatch)
            batches.append(item.message)
            outbox.ack(item)
    return batches


async def test_every_reported_flush_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    out = run_and_kill(path, -1, lambda out: len(out.flushed) >= 40)
    reported = max(out.flushed)
    readings = [r for batch in await drain(path) for r in batch.readings]
    kept = len(readings)
    # in order, exactly once, original timestamps and values, no gap
    assert [r.ts - T0 for r in readings] == list(range(kept))
    assert all(r.values == {"i": r.ts - T0} for r in readings)
    # everything reported is there; at most one more flush group was committed unreported
    assert reported <= kept <= reported + FLUSH_MAX
    # a flush never holds more than FLUSH_MAX readings: that is the loss bound
    steps = [b - a for a, b in zip([0, *out.flushed], out.flushed, strict=False)]
    assert max(steps) <= FLUSH_MAX


async def test_a_batch_in_flight_at_kill_9_comes_back_with_its_seq(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    acks = 30
    stuck_at: list[int] = []

    def enough(out: ChildOutput) -> bool:
        # the unacknowledged batch is out, and readings kept coming for 10 more flushes
        if len(out.handed) <= acks:
            return False
        stuck_at.append(len(out.flushed))
        return len(out.flushed) >= stuck_at[0] + 10

    out = run_and_kill(path, acks, enough)
    assert len(out.acked) == acks
    stuck = max(out.handed)
    assert stuck not in out.acked
    batches = await drain(path)
    # the same seq and the same readings again, then new seqs
    assert (batches[0].seq, [r.ts - T0 for r in batches[0].readings]) == (stuck, out.handed[stuck])
    assert [b.seq for b in batches] == list(range(stuck, stuck + len(batches)))
    delivered = [t for seq in out.acked for t in out.handed[seq]]
    remaining = [r.ts - T0 for batch in batches for r in batch.readings]
    everything = sorted(delivered + remaining)
    # nothing reported lost, nothing twice
    assert everything == list(range(len(everything)))
    reported = max(out.flushed)
    assert reported <= len(everything) <= reported + FLUSH_MAX
