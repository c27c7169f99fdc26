"""``edge-agent run`` stops promptly under saturation, and what it buffered survives the stop.

Ten simulated poles polled every millisecond (more than the agent can do: it is saturated),
the agent a real process on a real Mosquitto, stopped five times by SIGINT and SIGTERM. Each
stop must end the process within the bound, with exit status 0, having logged what it did and
without pymodbus complaining about an answer without its request; the next start must find
the spool as it was left; once the poles are gone, one more start delivers everything.
(A longer soak, 400 devices every 100 ms and many stops, is ``bench/agent_stop.py``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_profiles.wire import AgentHealth, Channel, TelemetryBatch, subscription
from firmware_sim import run_smart_pole
from tests.helpers import eventually

pytestmark = pytest.mark.integration

POLES = 10
STOPS = 5
STOP_BOUND_S = 5.0  # from the signal to the process's exit
SATURATED_S = 1.0  # of polling at full speed before each stop


def _events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == name:
                found.append(entry)
    return found


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _wait_for_event(log: Path, name: str, timeout: float = 30) -> None:
    async def logged() -> bool | None:
        return True if _events(log, name) else None

    await eventually(logged, timeout=timeout)


async def test_the_agent_stops_within_the_bound_under_saturation_and_keeps_its_spool(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id = f"agent-{unique_id}"
    delivered: dict[int, int] = {}  # batch seq -> readings (a batch re-sent counts once)
    health: list[AgentHealth] = []
    async with contextlib.AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(run_smart_pole(seed=i, port=0, tick_s=None))
            for i in range(POLES)
        ]
        config = tmp_path / "agent.yaml"
        devices = "".join(
            f"  - device_id: pole-{i}\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: {sim.host}, port: {sim.port}, timeout_s: 0.5}}\n"
            "    poll_interval_s: 0.001\n"
            "    report_on_change: false\n"
            for i, sim in enumerate(sims)
        )
        config.write_text(
            f"agent_id: {agent_id}\n"
            f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}}}\n"
            f"devices:\n{devices}"
            f"data_dir: {tmp_path / 'agent'}\n"
            "health_interval_s: 0.5\n"
            "log_format: json\n"
            # no hub here (a plain subscriber counts what arrives): the broker's PUBACK is
            # the confirmation, so the spool empties once everything is published
            "delivery: {confirm: broker}\n"
        )
        client = await stack.enter_async_context(
            aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"watch-{unique_id}")
        )
        await client.subscribe(subscription(Channel.TELEMETRY, agent_id), qos=1)
        await client.subscribe(subscription(Channel.HEALTH, agent_id), qos=1)
        await client.subscribe(subscription(Channel.EVENTS, agent_id), qos=1)  # as a hub does

        async def collect() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.matches(subscription(Channel.EVENTS, agent_id)):
                    continue
                if message.topic.matches(subscription(Channel.HEALTH, agent_id)):
                    health.append(AgentHealth.model_validate_json(message.payload))
                    continue
                batch = TelemetryBatch.model_validate_json(message.payload)
                delivered[batch.seq] = len(batch.readings)

        collector = asyncio.create_task(collect())
        stack.callback(collector.cancel)

        def served() -> int:
            # each poll reads the input registers once (FC 4): the readings the poles served
            return sum(sim.server.traffic.total("request", 4) for sim in sims)

        spooled_before = 0
        for run in range(STOPS):
            log = tmp_path / f"agent-{run}.log"
            agent = _start(config, log)
            try:
                await _wait_for_event(log, "uplink connected")
                (opened,) = _events(log, "spool opened")
                assert opened["readings"] == spooled_before, "the spool is as the stop left it"
                start = served()

                async def polling(start: int = start) -> bool | None:
                    return True if served() > start + 100 else None

                await eventually(polling, timeout=20)
                await asyncio.sleep(SATURATED_S)  # saturated for a while (a pace, not a wait)
                sig = signal.SIGINT if run % 2 == 0 else signal.SIGTERM
                agent.send_signal(sig)
                signalled = time.monotonic()
                code = await asyncio.to_thread(agent.wait, STOP_BOUND_S * 3)
                took = time.monotonic() - signalled
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait()
            text = log.read_text()
            assert took < STOP_BOUND_S, f"stop {run} ({sig.name}) took {took:.1f} s"
            assert code == 0, text[-2000:]
            (stopped,) = _events(log, "agent stopped")
            assert stopped["tasks_not_stopped"] == 0
            assert stopped["drivers_closed"] == POLES
            assert "Traceback" not in text
            assert "without a corresponding request" not in text
            spooled_before = stopped["readings_spooled"]

        # the poles go away; one more start delivers every reading still in the spool
        total = served()
        for sim in sims:
            await sim.server.stop()
        log = tmp_path / "agent-drain.log"
        agent = _start(config, log)
        try:
            await _wait_for_event(log, "uplink connected")
            (opened,) = _events(log, "spool opened")
            assert opened["readings"] == spooled_before

            health.clear()

            async def spool_empty() -> bool | None:
                return True if any(h.buffer_readings == 0 for h in health) else None

            await eventually(spool_empty, timeout=30)

            async def all_delivered() -> int | None:
                count = sum(delivered.values())
                # a poll in flight at a stop may have been served but never become a reading
                return count if count >= total - POLES * STOPS else None

            count = await eventually(all_delivered, timeout=10)
            agent.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(agent.wait, STOP_BOUND_S * 3) == 0
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        (stopped,) = _events(log, "agent stopped")
        assert stopped["readings_spooled"] == 0
        assert count <= total
