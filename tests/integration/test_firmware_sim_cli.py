"""``firmware-sim run-site`` as a subprocess: endpoint table, agent config, run-time faults."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_profiles import load_builtin_profile
from drivers import ModbusRtuSettings, ModbusTcpDriver, ModbusTcpSettings
from drivers.errors import DriverTimeout
from edge_agent.settings import AgentSettings
from iot_runtime import load_settings

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "firmware-sim"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site.yaml"
ENV = {**os.environ, "COLUMNS": "200"}


@dataclass
class Site:
    proc: asyncio.subprocess.Process
    table: str
    control: str
    agent_yaml: Path


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _exists(path: str) -> bool:
    return os.path.lexists(path)


async def _wait_exit(proc: asyncio.subprocess.Process, timeout_s: float) -> int:
    async with asyncio.timeout(timeout_s):
        return await proc.wait()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    agent_yaml = tmp_path / "agent.yaml"
    with (tmp_path / "run-site.log").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            str(BIN),
            "run-site",
            str(EXAMPLE),
            "--agent-config",
            str(agent_yaml),
            "--control",
            "0",  # a free TCP port, printed on the control: line
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=ENV,
            start_new_session=True,
        )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(15):
            while not lines or not lines[-1].startswith("control: "):
                line = await proc.stdout.readline()
                if not line:
                    log = (tmp_path / "run-site.log").read_text()
                    pytest.fail(f"run-site ended early: {''.join(lines)}\n{log}")
                lines.append(line.decode())
        yield Site(proc, "".join(lines), lines[-1].split()[-1], agent_yaml)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        # drain what is left so the pipe transport closes cleanly
        await proc.stdout.read()


async def test_run_site_serves_every_endpoint_and_takes_faults_at_run_time(site: Site) -> None:
    table = site.table
    for name, address in [
        ("pole-1", "modbus-tcp://127.0.0.1:"),
        ("pole-2", "modbus-rtu://"),
        ("gw-1", "units 1-5"),
        ("manhole-1", "coap://127.0.0.1:"),
        ("nb-1", "at://"),
    ]:
        (row,) = [line for line in table.splitlines() if f" {name} " in line]
        assert address in row

    settings = load_settings(AgentSettings, site.agent_yaml)
    assert settings.agent_id == "demo-site"
    assert (settings.mqtt.host, settings.mqtt.port) == ("127.0.0.1", 1883)
    devices = {d.device_id: d for d in settings.devices}
    assert set(devices) == {
        "pole-1",
        "pole-2",
        "gw-1-water_meter",
        "gw-1-electricity_meter",
        "gw-1-barrier_gate",
        "gw-1-parking_sensor",
        "gw-1-access_controller",
        "manhole-1",
    }
    pole = devices["pole-1"].connection
    assert isinstance(pole, ModbusTcpSettings)
    rtu = devices["pole-2"].connection
    assert isinstance(rtu, ModbusRtuSettings)
    assert rtu.port is not None
    rtu_port = rtu.port
    assert _exists(rtu_port)
    assert f"modbus-tcp://127.0.0.1:{pole.port} unit 1" in table

    settings_fast = pole.model_copy(update={"timeout_s": 0.3, "retries": 0})
    control = ("--control", site.control)
    async with ModbusTcpDriver(load_builtin_profile("smart_pole"), settings_fast) as driver:
        assert "voltage" in await driver.read(["voltage"])

        rc, out, err = await _cli("fault", "pole-1", "no_reply", *control)
        assert (rc, err) == (0, "")
        assert "no_reply on pole-1: every request until cleared" in out
        with pytest.raises(DriverTimeout):
            await driver.read(["voltage"])

        rc, out, _ = await _cli("status", *control)
        assert rc == 0
        (row,) = [line for line in out.splitlines() if " pole-1 " in line]
        assert "no_reply" in row
        assert "faults_applied=1" in row

        rc, out, err = await _cli("fault", "pole-9", "no_reply", *control)
        assert rc == 1
        assert "no sim 'pole-9'" in err
        rc, out, err = await _cli("fault", "manhole-1", "melt", *control)
        assert rc == 1
        assert "has no fault 'melt'" in err

        rc, out, _ = await _cli("clear", "pole-1", *control)
        assert rc == 0
        assert "cleared" in out
        assert "voltage" in await driver.read(["voltage"])

    site.proc.send_signal(signal.SIGTERM)
    assert await _wait_exit(site.proc, 10) == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(site.proc.pid, 0)  # nothing of its session is left
    assert not _exists(rtu_port)  # the pty links are gone with their directories
    assert not _exists(os.path.dirname(rtu_port))
    rc, _, err = await _cli("status", *control)
    assert rc == 1
    assert "no firmware-sim run-site answering" in err


async def test_run_site_refuses_an_invalid_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "site.yaml"
    scenario.write_text("sims:\n  - {name: a, kind: smart_pole_tcp, port: 70000}\n")
    rc, out, err = await _cli("run-site", str(scenario))
    assert rc == 2
    assert out == ""
    assert f"{scenario}: sims[0].port: Input should be less than or equal to 65535" in err


async def test_run_one_sim_and_control_it_over_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "ctl.sock"
    if len(str(sock)) > 100:  # UNIX socket paths are short
        pytest.skip("tmp_path too long for a UNIX socket")
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        "run",
        "manhole-cover",
        "--port",
        "0",
        "--control",
        str(sock),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("manhole_cover  coap://127.0.0.1:")
        rc, out, _ = await _cli("fault", "manhole_cover", "drop", "--control", str(sock))
        assert rc == 0
        assert "drop on manhole_cover" in out
        rc, out, _ = await _cli("status", "--control", str(sock))
        assert "drop" in out
        proc.send_signal(signal.SIGINT)
        assert await _wait_exit(proc, 10) == 0
        assert not sock.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.read()


async def test_run_site_with_the_hj212_analyser(tmp_path: Path) -> None:
    scenario = tmp_path / "site.yaml"
    scenario.write_text(
        "agent_id: air-1\n"
        "sims:\n"
        "  - {name: aq-pty, kind: pollution_analyser, rtd_interval_s: 60}\n"
        "  - {name: aq-tcp, kind: pollution_analyser, transport: tcp_server, port: 0}\n"
    )
    agent_yaml = tmp_path / "agent.yaml"
    proc = await asyncio.create_subprocess_exec(
        str(BIN),
        "run-site",
        str(scenario),
        "--agent-config",
        str(agent_yaml),
        "--control",
        "0",
        "--mqtt-port",
        "18830",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        async with asyncio.timeout(15):
            while not lines or not lines[-1].startswith("control: "):
                line = await proc.stdout.readline()
                assert line, "".join(lines)
                lines.append(line.decode())
        table, control = "".join(lines), lines[-1].split()[-1]
        assert "hj212-serial:///dev/pts/" in table
        assert "hj212-tcp://127.0.0.1:" in table

        settings = load_settings(AgentSettings, agent_yaml)
        assert settings.mqtt.port == 18830
        kinds = {d.device_id: d.connection.transport for d in settings.devices}
        assert kinds == {"aq-pty": "hj212_serial", "aq-tcp": "hj212_tcp"}

        rc, out, _ = await _cli("fault", "aq-tcp", "bad_crc", "--count", "2", "--control", control)
        assert rc == 0
        assert "bad_crc on aq-tcp: next 2 frame(s)" in out
        rc, out, _ = await _cli("status", "--control", control)
        (row,) = [line for line in out.splitlines() if " aq-tcp " in line]
        assert "bad_crc (2 left)" in row
        rc, _, err = await _cli(
            "fault", "aq-tcp", "bad_crc", "--unit-id", "1", "--control", control
        )
        assert rc == 1
        assert "takes no unit_id" in err

        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stdout.read()


async def test_fault_help_states_the_one_rule_for_every_simulator() -> None:
    rc, out, _ = await _cli("fault", "--help")
    assert rc == 0
    text = " ".join(out.replace("│", " ").split())
    assert "Every fault lasts until `firmware-sim clear SIM`, unless --count N is given" in text
    assert "The same rule for every simulator." in text
    rc, _, err = await _cli("fault", "pole-1", "no_reply", "--count", "0")
    assert rc == 2
    assert "Invalid value for '--count': Input should be greater than or equal to 1" in " ".join(
        err.replace("│", " ").split()
    )


async def test_set_holds_a_point_until_released(site: Site) -> None:
    """``firmware-sim set`` makes a pole report a door opened and a PM2.5 peak over Modbus (what
    an agent would read), a gateway's barrier a fault state by its enum label; bad values and
    devices are refused with the reason; ``release`` gives the points back to the physics."""
    settings = load_settings(AgentSettings, site.agent_yaml)
    pole = next(d for d in settings.devices if d.device_id == "pole-1").connection
    assert isinstance(pole, ModbusTcpSettings)
    control = ("--control", site.control)
    async with ModbusTcpDriver(load_builtin_profile("smart_pole"), pole) as driver:
        rc, out, err = await _cli("set", "pole-1", "door_open=true", "pm25=180", *control)
        assert (rc, err) == (0, "")
        assert "door_open=True, pm25=180 on pole-1: held until released" in out
        for _ in range(3):  # held across the model's ticks
            values = await driver.read(["door_open", "pm25"])
            assert (values["door_open"], values["pm25"]) == (True, 180)
            await asyncio.sleep(0.4)

        rc, out, _ = await _cli("status", *control)
        (row,) = [line for line in out.splitlines() if " pole-1 " in line]
        assert "door_open=True" in row

        for args, reason in [
            (("pole-1", "pm25=5000"), "pm25: "),
            (("pole-1", "door_open=maybe"), "door_open: expects true or false, got 'maybe'"),
            (("pole-1", "flux=3"), "smart_pole has no point 'flux'"),
            (("pole-1", "door_open"), "write POINT=VALUE"),
            (("gw-1", "state=fault"), "gw-1 has several devices: give --device"),
            (("manhole-1", "tilt=3"), "has no points to set"),
        ]:
            rc, out, err = await _cli("set", *args, *control)
            assert rc == 1, (args, out, err)
            assert reason in err, (args, err)

        rc, out, err = await _cli(
            "set", "gw-1", "state=fault", "--device", "gw-1-barrier_gate", *control
        )
        assert (rc, err) == (0, "")
        assert "state=4 on gw-1" in out

        rc, out, _ = await _cli("release", "pole-1", *control)
        assert rc == 0
        assert "released door_open, pm25 on pole-1" in out
        # the physics drives them again: the door is shut, PM2.5 back to its own level
        values = await driver.read(["door_open", "pm25"])
        await asyncio.sleep(0.6)
        values = await driver.read(["door_open", "pm25"])
        assert values["door_open"] is False
        assert values["pm25"] != 180
