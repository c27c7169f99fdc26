"""The agent is killed with SIGKILL while its uplink is down, then restarted: everything it
had buffered before the documented durability bound (the buffer's flush interval) arrives."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from firmware_sim import run_smart_pole
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration

POLL_S = 0.1
FLUSH_S = 0.2


def _start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "edge-agent"), "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_readings_buffered_before_a_kill_9_are_delivered_after_restart(
    mosquitto_private: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    device_id = f"pole-{unique_id}"
    await asyncio.to_thread(mosquitto_private.stop)  # the uplink is down from the start
    async with run_smart_pole(seed=5, port=0, tick_s=None) as sim:
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"agent_id: agent-{unique_id}\n"
            f"mqtt: {{host: {mosquitto_private.host}, port: {mosquitto_private.port}, keepalive_s: 5}}\n"
            "devices:\n"
            f"  - device_id: {device_id}\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: {sim.host}, port: {sim.port}}}\n"
            f"    poll_interval_s: {POLL_S}\n"
            "    report_on_change: false\n"
            f"buffer: {{flush_interval_s: {FLUSH_S}}}\n"
            f"data_dir: {tmp_path / 'agent'}\n"
            "log_format: json\n"
        )
        log = tmp_path / "agent.log"
        agent = _start_agent(config, log)
        try:

            def polls() -> int:
                # each poll reads the input registers once (FC 4): the readings the sim served
                return sim.server.traffic.total("request", 4)

            async def enough() -> bool | None:
                return True if polls() >= 40 else None

            await eventually(enough, timeout=30)
            os.kill(agent.pid, signal.SIGKILL)
            killed_at = time.time()
            agent.wait(timeout=10)
            served = polls()
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()

        # the broker and the hub come up, the agent restarts and delivers its buffer
        await asyncio.to_thread(mosquitto_private.start)
        hub_settings = HubSettings(
            mqtt={"host": mosquitto_private.host, "port": mosquitto_private.port},
            client_id=f"hub-{unique_id}",
            storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
            registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
            api=ApiSettings(port=free_port()),
        )
        async with running_hub(hub_settings):
            agent = _start_agent(config, log)
            try:
                bound = int(FLUSH_S / POLL_S) + 2  # readings the durability bound may cost
                cutoff_ms = int(killed_at * 1000)

                def stored_before_kill() -> list[int]:
                    body = influx_db.query(
                        f"SELECT power FROM smart_pole WHERE device_id = '{device_id}'", epoch="ms"
                    )
                    series = body["results"][0].get("series") or [{"values": []}]
                    return [row[0] for row in series[0]["values"] if row[0] <= cutoff_ms]

                async def delivered() -> list[int] | None:
                    times = await asyncio.to_thread(stored_before_kill)
                    return times if len(times) >= served - bound else None

                times = await eventually(delivered, timeout=60)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=15)
    assert len(set(times)) == len(times), "no duplicates"
    assert served - bound <= len(times) <= served
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 1000 * POLL_S * 3, "no hole in the middle of the buffered readings"


async def test_an_agent_killed_while_connected_delivers_all_but_the_flush_bound(
    mosquitto: Any, influx_db: Any, tmp_path: Path, unique_id: str
) -> None:
    """SIGKILL with the uplink up: batches the broker had but the hub had not confirmed are in
    the spool, sent again after the restart; only the last flush interval may be lost."""
    device_id = f"pole-{unique_id}"
    hub_settings = HubSettings(
        mqtt={"host": mosquitto.host, "port": mosquitto.port},
        client_id=f"hub-{unique_id}",
        storage=InfluxV1Settings(url=influx_db.url, database=influx_db.name),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    async with run_smart_pole(seed=6, port=0, tick_s=None) as sim, running_hub(hub_settings):
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"agent_id: agent-{unique_id}\n"
            f"mqtt: {{host: {mosquitto.host}, port: {mosquitto.port}, keepalive_s: 5}}\n"
            "devices:\n"
            f"  - device_id: {device_id}\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: {sim.host}, port: {sim.port}}}\n"
            f"    poll_interval_s: {POLL_S}\n"
            "    report_on_change: false\n"
            f"buffer: {{flush_interval_s: {FLUSH_S}}}\n"
            f"data_dir: {tmp_path / 'agent'}\n"
            "log_format: json\n"
        )
        log = tmp_path / "agent.log"

        def polls() -> int:
            return sim.server.traffic.total("request", 4)  # one read of FC 4 per poll

        agent = _start_agent(config, log)
        try:

            async def enough() -> bool | None:
                return True if polls() >= 40 else None

            await eventually(enough, timeout=30)
            os.kill(agent.pid, signal.SIGKILL)
            killed_at = time.time()
            agent.wait(timeout=10)
            served = polls()
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        agent = _start_agent(config, log)
        try:
            bound = int(FLUSH_S / POLL_S) + 2  # readings the durability bound may cost
            cutoff_ms = int(killed_at * 1000)

            def stored_before_kill() -> list[int]:
                body = influx_db.query(
                    f"SELECT power FROM smart_pole WHERE device_id = '{device_id}'", epoch="ms"
                )
                series = body["results"][0].get("series") or [{"values": []}]
                return [row[0] for row in series[0]["values"] if row[0] <= cutoff_ms]

            async def delivered() -> list[int] | None:
                times = await asyncio.to_thread(stored_before_kill)
                return times if len(times) >= served - bound else None

            times = await eventually(delivered, timeout=60)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=15)
    assert len(set(times)) == len(times), "no duplicates"
    assert served - bound <= len(times) <= served
