"""One device's failure, of any exception type, stops neither the other devices nor the uplink.

A real agent polls two simulated poles over Modbus TCP, one over Modbus RTU on a
pseudo-terminal whose line settings the operating system refuses (``tcsetattr`` raising
``termios.error``, as a port that cannot do ``parity: E`` does), and one whose driver raises a
series of arbitrary exceptions; a real Mosquitto carries the telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_profiles import load_builtin_profile
from device_profiles.wire import Channel, TelemetryBatch, subscription
from drivers import ModbusRtuSettings, ModbusTcpSettings
from drivers.fake import FakeDriver
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeliverySettings, DeviceConfig
from firmware_sim import run_smart_pole
from firmware_sim.modbus_rtu_server import run_smart_pole_rtu
from iot_runtime.mqtt import MqttSettings
from tests.helpers import eventually

pytestmark = pytest.mark.integration

#: Exceptions no driver translates by name; each must stay the failing device's alone.
ARBITRARY: list[Exception] = [
    termios.error(22, "Invalid argument"),
    ValueError("invalid literal for int() with base 10: 'x'"),
    RuntimeError("the driver's state machine is confused"),
    KeyError("register"),
    TypeError("unsupported operand type(s)"),
    ZeroDivisionError("division by zero"),
    AttributeError("'NoneType' object has no attribute 'read'"),
    UnicodeDecodeError("ascii", b"\xff", 0, 1, "ordinal not in range(128)"),
    AssertionError(),
]


async def test_arbitrary_exceptions_in_one_device_leave_the_others_and_the_uplink_running(
    mosquitto: Any, tmp_path: Path, unique_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent_id = f"agent-{unique_id}"
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port)
    async with contextlib.AsyncExitStack() as stack:
        poles = [
            await stack.enter_async_context(run_smart_pole(seed=i, port=0, tick_s=0.1))
            for i in range(2)
        ]
        rtu = await stack.enter_async_context(run_smart_pole_rtu(seed=9, tick_s=None))
        good = [f"good-{i}" for i in range(len(poles))]
        devices = [
            DeviceConfig(
                device_id=device_id,
                profile="smart_pole",
                connection=ModbusTcpSettings(host=sim.host, port=sim.port, timeout_s=0.5),
                poll_interval_s=0.05,
                report_on_change=False,
            )
            for device_id, sim in zip(good, poles, strict=True)
        ]
        devices.append(
            DeviceConfig(
                device_id="rtu-refused",
                profile="smart_pole",
                connection=ModbusRtuSettings(port=rtu.port_path, parity="E", timeout_s=0.2),
                poll_interval_s=0.05,
            )
        )
        buggy = [f"buggy-{i}" for i in range(len(ARBITRARY))]
        devices += [
            DeviceConfig(
                device_id=device_id,
                profile="smart_pole",
                connection=ModbusTcpSettings(host=poles[0].host, port=poles[0].port),
                poll_interval_s=0.05,
                report_on_change=False,
            )
            for device_id in buggy
        ]
        agent = Agent(
            AgentSettings(
                agent_id=agent_id,
                mqtt=mqtt,
                devices=devices,
                batch_max_delay_s=0.05,
                data_dir=tmp_path / "agent",
                # no hub here, a plain subscriber: the broker's PUBACK is the confirmation
                delivery=DeliverySettings(confirm="broker"),
            )
        )
        # the injection: each buggy device's driver raises one of the exceptions above, twice
        for device_id, exc in zip(buggy, ARBITRARY, strict=True):
            fake = FakeDriver(load_builtin_profile("smart_pole"), endpoint=f"fake://{device_id}")
            fake.fail_next_read(exc, times=2)
            agent.devices[device_id].driver = fake
        pollers = {p.device.device_id: p for p in agent.pollers}

        # the operating system refuses the line settings of the RTU port (the simulator's own
        # side of the pseudo-terminal is already set up)
        def refuse(fd: int, when: int, attributes: list[Any]) -> None:
            raise termios.error(22, "Invalid argument")

        monkeypatch.setattr(termios, "tcsetattr", refuse)

        received: dict[str, int] = {}
        client = await stack.enter_async_context(
            aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"watch-{unique_id}")
        )
        await client.subscribe(subscription(Channel.TELEMETRY, agent_id), qos=1)
        await client.subscribe(subscription(Channel.EVENTS, agent_id), qos=1)  # as a hub does

        async def count() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                if message.topic.matches(subscription(Channel.EVENTS, agent_id)):
                    continue
                batch = TelemetryBatch.model_validate_json(message.payload)
                for reading in batch.readings:
                    received[reading.device_id] = received.get(reading.device_id, 0) + 1

        counter = asyncio.create_task(count())
        agent_task = asyncio.create_task(agent.run(), name="agent")
        try:

            async def every_error_raised() -> bool | None:
                assert not agent_task.done(), agent_task
                done = all(pollers[d].errors == 2 for d in buggy)
                return True if done and pollers["rtu-refused"].errors >= 3 else None

            await eventually(every_error_raised, timeout=30)
            assert pollers["rtu-refused"].online is False
            assert pollers["good-0"].online and pollers["good-1"].online
            after_errors = {d: received.get(d, 0) for d in good}

            async def still_flowing() -> bool | None:
                assert not agent_task.done(), agent_task
                more = all(received.get(d, 0) >= after_errors[d] + 10 for d in good)
                # the buggy devices are back once their drivers stop raising
                back = all(received.get(d, 0) > 0 for d in buggy)
                return True if more and back else None

            await eventually(still_flowing, timeout=30)
            assert all(pollers[d].online for d in buggy)
            assert pollers["rtu-refused"].online is False
            assert agent.uplink.connected.is_set()
        finally:
            agent_task.cancel()
            counter.cancel()
            results = await asyncio.gather(agent_task, counter, return_exceptions=True)
        for result in results:
            assert result is None or isinstance(result, asyncio.CancelledError), result


async def test_edge_agent_check_reports_a_port_refusing_its_line_settings_without_traceback(
    tmp_path: Path,
) -> None:
    # the check runs as a real process whose operating system refuses the line settings
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import termios\n\n"
        "def _refuse(fd, when, attributes):\n"
        "    raise termios.error(22, 'Invalid argument')\n\n"
        "termios.tcsetattr = _refuse\n"
    )
    async with (
        run_smart_pole(seed=1, port=0, tick_s=None) as sim,
        run_smart_pole_rtu(seed=2, tick_s=None) as rtu,
    ):
        config = tmp_path / "agent.yaml"
        config.write_text(
            "agent_id: cabinet-1\n"
            "devices:\n"
            "  - device_id: pole-1\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: 127.0.0.1, port: {sim.port}}}\n"
            "  - device_id: pole-rtu\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_rtu, port: {rtu.port_path}, parity: E}}\n"
            f"data_dir: {tmp_path / 'agent'}\n"
        )
        env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(tmp_path / "site")}
        result = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "edge-agent"), "check", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pole-1" in result.stdout and "16 points" in result.stdout  # the other device is read
    rows = [line for line in result.stdout.splitlines() if "pole-rtu" in line]
    assert len(rows) == 1 and "ConnectError" in rows[0], result.stdout
    assert "refuses the line settings 9600-8E1" in rows[0], result.stdout
