"""The hub killed (SIGKILL) while 5 poles are polled at 10 Hz, also while InfluxDB is down:
every reading still lands once (issue 15's fault suite).

The hub is a real ``cloud-hub serve`` process. What it had received but not yet acknowledged
is redelivered by the broker (its persistent session); what it had stored but not yet
confirmed to the agent is sent again by the agent; the store keeps one value per read time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.harness.process import HarnessError, ManagedProcess
from tests.helpers import eventually, fast_pole_agent, fast_poles

pytestmark = pytest.mark.integration

POLES = 5


def _hub_process(tmp: Path, mosquitto: Any, influx_url: str, unique_id: str) -> ManagedProcess:
    port = free_port()
    config = tmp / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"host": mosquitto.host, "port": mosquitto.port},
                "client_id": f"hub-{unique_id}",
                "storage": {"backend": "influxdb1", "url": influx_url, "database": "iot"},
                "registry_url": f"sqlite+aiosqlite:///{tmp / 'registry.db'}",
                "api": {"host": "127.0.0.1", "port": port},
                "log_format": "json",
            }
        )
    )

    def alive() -> bool:  # /healthz: a hub whose store is down is alive but not ready
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)

    return ManagedProcess(
        "hub",
        [str(Path(sys.executable).with_name("cloud-hub")), "serve", "--config", str(config)],
        log_path=tmp / "hub.log",
        ready=alive,
        cwd=tmp,
        start_timeout=60,
    )


def _stored_times(influxdb: Any) -> dict[str, list[int]]:
    try:
        body = influxdb.query("iot", "SELECT power FROM smart_pole GROUP BY device_id", epoch="ms")
    except HarnessError:  # the hub has not created its database yet
        return {}
    return {
        s["tags"]["device_id"]: [row[0] for row in s["values"]]
        for s in body["results"][0].get("series", [])
    }


@pytest.mark.parametrize("influx_down", [False, True], ids=["store-up", "store-down"])
async def test_a_hub_sigkill_loses_no_reading_of_five_poles_at_10hz(
    mosquitto: Any, influxdb_private: Any, tmp_path: Path, unique_id: str, influx_down: bool
) -> None:
    hub = _hub_process(tmp_path, mosquitto, influxdb_private.url, unique_id)
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port, keepalive_s=5)
    async with contextlib.AsyncExitStack() as stack:
        sims = await fast_poles(stack, POLES)
        device_ids = [f"pole-{i}-{unique_id}" for i in range(len(sims))]
        agent = fast_pole_agent(f"agent-{unique_id}", mqtt, sims, device_ids, tmp_path / "agent")
        await asyncio.to_thread(hub.start)
        stack.callback(hub.stop)
        agent_task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            await asyncio.sleep(3)  # polling and delivering before the fault (a pace)
            if influx_down:
                await asyncio.to_thread(influxdb_private.kill)
                await asyncio.sleep(1)  # the hub spools what arrives meanwhile
            await asyncio.to_thread(hub.kill)
            await asyncio.sleep(3)  # the broker queues for the dead hub's session
            await asyncio.to_thread(hub.start)
            await asyncio.sleep(2)
            if influx_down:
                await asyncio.to_thread(influxdb_private.start)
            await asyncio.sleep(2)  # polling goes on after the hub is back
            for sim in sims:
                await sim.server.stop()
            served = {p.device.device_id: p.polls for p in agent.pollers}
            assert all(n > 50 for n in served.values()), served

            async def all_stored() -> dict[str, list[int]] | None:
                nonlocal served  # (a poll answered just before its server stopped counts)
                served = {p.device.device_id: p.polls for p in agent.pollers}
                got = await asyncio.to_thread(_stored_times, influxdb_private)
                return got if {d: len(t) for d, t in got.items()} == served else None

            try:
                got = await eventually(all_stored, timeout=90)
            except AssertionError:
                got = await asyncio.to_thread(_stored_times, influxdb_private)
                counts = {d: len(t) for d, t in got.items()}
                raise AssertionError(
                    f"stored {counts} != served {served}; spool depth {agent.outbox.depth}, "
                    f"unconfirmed {agent.outbox.unconfirmed_batches}\n{hub.log_tail()}"
                ) from None
            for device_id, times in got.items():
                assert len(set(times)) == len(times) == served[device_id], device_id

            async def confirmed() -> bool | None:
                return True if agent.outbox.depth == 0 else None

            await eventually(confirmed, timeout=60)  # every batch confirmed stored
        finally:
            agent_task.cancel()
            await asyncio.gather(agent_task, return_exceptions=True)
            if not influxdb_private.running:
                await asyncio.to_thread(influxdb_private.start)
