"""A Modbus exception, a timeout and garbage bytes from one device while the uplink is down:
that device's polling resumes when it recovers, and the other device never stops."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import Fault, run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fault", [Fault.exception, Fault.no_reply, Fault.garbage])
async def test_one_failing_device_recovers_and_never_stalls_the_other(
    fault: Fault, tmp_path: Path, unique_id: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        bad = await stack.enter_async_context(run_smart_pole(seed=1, port=0, tick_s=None))
        good = await stack.enter_async_context(run_smart_pole(seed=2, port=0, tick_s=None))
        agent = Agent(
            AgentSettings(
                agent_id=f"agent-{unique_id}",
                mqtt=MqttSettings(host="127.0.0.1", port=free_port()),  # nothing listens: outage
                devices=[
                    DeviceConfig(
                        device_id=name,
                        profile="smart_pole",
                        connection=ModbusTcpSettings(host=sim.host, port=sim.port, timeout_s=0.3),
                        poll_interval_s=0.1,
                        report_on_change=False,
                    )
                    for name, sim in (("bad", bad), ("good", good))
                ],
                data_dir=tmp_path / "agent",
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            pollers = {p.device.device_id: p for p in agent.pollers}

            async def polls(name: str, above: int) -> int | None:
                count = pollers[name].polls
                return count if count > above else None

            await eventually(lambda: polls("bad", 3))
            bad.server.faults.inject(fault, count=None)

            async def failing() -> bool | None:
                return (
                    True if pollers["bad"].online is False and pollers["bad"].errors >= 2 else None
                )

            await eventually(failing, timeout=10)
            good_before = pollers["good"].polls
            bad_before = pollers["bad"].polls
            await eventually(lambda: polls("good", good_before + 10))  # it never stopped
            assert pollers["bad"].polls == bad_before

            bad.server.faults.clear()
            await eventually(lambda: polls("bad", bad_before), timeout=15)  # it came back
            assert pollers["bad"].online is True
            assert agent.outbox.depth > 0  # everything waits on disk for the uplink
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
