"""A link that silently drops everything (no FIN, no RST) is detected within the keepalive
bound, the agent reconnects when the path works again, and delivers what it buffered to the
hub (which confirms what it stored; the hub's own link is not cut)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.harness.blackhole import BlackholeProxy
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration

KEEPALIVE_S = 5


async def test_silent_link_is_detected_within_the_keepalive_bound(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    hub_settings = HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
    )
    async with (
        running_hub(hub_settings),
        BlackholeProxy(mosquitto.host, mosquitto.port) as proxy,
        run_smart_pole(seed=1, port=0, tick_s=None) as sim,
    ):
        agent = Agent(
            AgentSettings(
                agent_id=f"agent-{unique_id}",
                mqtt=MqttSettings(host="127.0.0.1", port=proxy.port, keepalive_s=KEEPALIVE_S),
                devices=[
                    DeviceConfig(
                        device_id=f"pole-{unique_id}",
                        profile="smart_pole",
                        connection=ModbusTcpSettings(host=sim.host, port=sim.port),
                        poll_interval_s=0.2,
                        report_on_change=False,
                    )
                ],
                data_dir=tmp_path / "agent",
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.uplink.connected.wait(), 10)
            proxy.freeze()
            frozen_at = time.monotonic()

            async def noticed() -> bool | None:
                return True if not agent.uplink.connected.is_set() else None

            await eventually(noticed, timeout=KEEPALIVE_S * 3)
            detected_after = time.monotonic() - frozen_at
            assert detected_after <= KEEPALIVE_S * 2 + 1, detected_after
            assert agent.outbox.depth > 0  # readings wait on disk meanwhile
            proxy.thaw()
            await asyncio.wait_for(agent.uplink.connected.wait(), KEEPALIVE_S * 4)
            assert agent.uplink.connects == 2

            async def drained() -> bool | None:
                return True if agent.outbox.depth == 0 else None

            await eventually(drained, timeout=20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
