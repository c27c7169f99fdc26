"""The Modbus RTU driver and the shared bus against simulators on pseudo-terminals.

No hardware: each simulator holds the master side of a pty and clients open its slave path,
our driver and Debian's ``mbpoll -m rtu`` alike.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from device_profiles import DeviceProfile, load_builtin_profile
from drivers.errors import ConfigurationError, ConnectError, DriverTimeout, EncodeError
from drivers.modbus import bus as bus_module
from drivers.modbus.bus import open_buses
from drivers.modbus.plan import plan_reads
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.rtu_settings import ModbusRtuSettings
from drivers.serial_ports import SerialPortNotFound
from firmware_sim.faults import Fault
from firmware_sim.modbus_rtu_server import ModbusRtuSimServer, SmartPoleRtuSim, run_smart_pole_rtu
from firmware_sim.register_image import RegisterImage

pytestmark = pytest.mark.integration

POLE = load_builtin_profile("smart_pole")
MBPOLL = shutil.which("mbpoll")


def rtu(port: str, unit_id: int = 1, **overrides: Any) -> ModbusRtuSettings:
    options: dict[str, Any] = {"timeout_s": 0.5, "retries": 0} | overrides
    return ModbusRtuSettings(port=port, unit_id=unit_id, **options)


def engineering(profile: DeviceProfile, raw: dict[str, Any]) -> dict[str, Any]:
    return {name: profile.points[name].from_raw(value) for name, value in raw.items()}


@pytest.fixture
async def sim() -> AsyncIterator[SmartPoleRtuSim]:
    async with run_smart_pole_rtu(seed=7, tick_s=None) as sim:
        yield sim


@pytest.fixture
async def driver(sim: SmartPoleRtuSim) -> AsyncIterator[ModbusRtuDriver]:
    async with ModbusRtuDriver(POLE, rtu(sim.port_path)) as driver:
        yield driver


# -- reads and writes -------------------------------------------------------------------------


async def test_reads_every_point_with_the_tcp_plan(sim: SmartPoleRtuSim, driver: ModbusRtuDriver):
    raw = await driver.read(list(POLE.points))
    assert list(raw) == list(POLE.points)
    assert engineering(POLE, raw) == sim.image.snapshot()
    blocks = plan_reads(POLE.points, max_gap=driver.settings.max_gap)
    requests = sim.traffic.requests(1)
    assert [r.function for r in requests] == [
        {"coil": 1, "discrete_input": 2, "holding_register": 3, "input_register": 4}[b.table]
        for b in blocks
    ]
    assert len(requests) == 4  # coils, discrete inputs, holding and input registers


async def test_dimming_write_moves_the_pole(sim: SmartPoleRtuSim, driver: ModbusRtuDriver):
    await driver.write("dimming", 40)
    await driver.write("lamp_on", False)
    assert [(w.point, w.value) for w in sim.writes] == [("dimming", 40), ("lamp_on", False)]
    values = engineering(POLE, await driver.read(["dimming", "lamp_on", "power"]))
    assert values == {"dimming": 40, "lamp_on": False, "power": 0}


async def test_refusals_stay_local(sim: SmartPoleRtuSim, driver: ModbusRtuDriver):
    with pytest.raises(ConfigurationError, match="not writable"):
        await driver.write("voltage", 1)
    with pytest.raises(EncodeError):
        await driver.write("dimming", 70000)
    assert sim.traffic.requests() == []


LAB = DeviceProfile.model_validate(
    {
        "schema_version": 1,
        "name": "lab",
        "transport": "modbus",
        "points": {
            "relay": {"type": "bool", "writable": True, "modbus": {"table": "coil", "address": 3}},
            "mode_a": {
                "type": "bool",
                "writable": True,
                "modbus": {"table": "holding_register", "address": 0, "bit": 0},
            },
            "mode_b": {
                "type": "bool",
                "writable": True,
                "modbus": {"table": "holding_register", "address": 0, "bit": 3},
            },
            "setpoint": {
                "type": "float32",
                "writable": True,
                "modbus": {"table": "holding_register", "address": 10, "word_order": "little"},
            },
            "counter": {"type": "int64", "modbus": {"table": "input_register", "address": 7}},
        },
    }
)


async def test_every_write_function_over_rtu():
    image = RegisterImage(LAB)
    image.set("counter", -(2**40))
    image.set("mode_b", True)
    async with (
        ModbusRtuSimServer({9: image}) as server,
        ModbusRtuDriver(LAB, rtu(server.port_path, 9)) as driver,
    ):
        await driver.write("relay", True)  # FC5
        await driver.write("mode_a", True)  # FC3 + FC6, keeps bit 3
        await driver.write("setpoint", 21.5)  # FC16
        raw = await driver.read(list(LAB.points))
        functions = [r.function for r in server.traffic.requests(9)]
    assert raw == {
        "relay": True,
        "mode_a": True,
        "mode_b": True,
        "setpoint": 21.5,
        "counter": -(2**40),
    }
    assert functions[:4] == [5, 3, 6, 16]
    assert [(w.unit_id, w.record.point) for w in server.writes] == [
        (9, "relay"),
        (9, "mode_a"),
        (9, "mode_b"),
        (9, "setpoint"),
    ]


# -- the shared bus ---------------------------------------------------------------------------


async def test_two_units_share_one_bus_and_the_last_close_releases_it():
    pole_a, pole_b = RegisterImage(POLE), RegisterImage(POLE)
    pole_a.set("dimming", 30)
    pole_b.set("dimming", 70)
    async with ModbusRtuSimServer({3: pole_a, 5: pole_b}) as server:
        a = ModbusRtuDriver(POLE, rtu(server.port_path, 3))
        b = ModbusRtuDriver(POLE, rtu(server.device_path, 5))  # the pty itself, not the link
        async with a, b:
            assert a.bus is b.bus
            assert open_buses() == [a.bus]
            assert a.bus is not None
            assert a.bus.users == 2
            results = await asyncio.gather(*(d.read(["dimming"]) for d in (a, b, a, b)))
            assert [r["dimming"] for r in results] == [30, 70, 30, 70]
            await a.close()
            assert b.connected
            assert (await b.read(["dimming"]))["dimming"] == 70
        assert open_buses() == []
        # one request at a time: every request is answered before the next one goes out
        directions = [r.direction for r in server.traffic]
        assert directions == ["request", "answer"] * (len(directions) // 2)


async def test_unknown_unit_gets_no_answer(sim: SmartPoleRtuSim):
    async with ModbusRtuDriver(POLE, rtu(sim.port_path, 2, timeout_s=0.2)) as stranger:
        with pytest.raises(DriverTimeout, match="no answer"):
            await stranger.read(["dimming"])
    assert sim.traffic.requests() == []  # another device's request is none of the pole's business


async def test_line_settings_must_agree(sim: SmartPoleRtuSim, driver: ModbusRtuDriver):
    other = ModbusRtuDriver(POLE, rtu(sim.port_path, 2, baudrate=19200))
    with pytest.raises(ConfigurationError, match="9600-8N1"):
        await other.read(["dimming"])
    await other.close()
    assert (await driver.read(["dimming"]))["dimming"] == 100


async def test_port_by_usb_serial_number(sim: SmartPoleRtuSim, monkeypatch: pytest.MonkeyPatch):
    adapter = SimpleNamespace(
        device=sim.server.device_path, serial_number="A10K3ZQ1", description="FT232R USB UART"
    )
    monkeypatch.setattr("drivers.serial_ports.list_ports.comports", lambda: [adapter])
    settings = ModbusRtuSettings(serial_number="A10K3ZQ1", timeout_s=0.5, retries=0)
    async with ModbusRtuDriver(POLE, settings) as driver:
        assert (await driver.read(["dimming"]))["dimming"] == 100
        assert driver.bus is not None
        assert driver.bus.identity is not None
        assert driver.bus.identity.serial_number == "A10K3ZQ1"
        assert driver.endpoint.startswith("modbus-rtu://serial=A10K3ZQ1?9600-8N1/")


async def test_port_gone_then_back_without_a_new_driver(
    sim: SmartPoleRtuSim, driver: ModbusRtuDriver
):
    assert (await driver.read(["dimming"]))["dimming"] == 100
    await sim.server.stop()  # the adapter is unplugged
    with pytest.raises(ConnectError):
        await driver.read(["dimming"])
    with pytest.raises(SerialPortNotFound, match="not found"):
        await driver.write("dimming", 20)
    await sim.server.start()  # plugged back in: same path, another /dev/pts
    await driver.write("dimming", 20)
    assert (await driver.read(["dimming"]))["dimming"] == 20


async def test_driver_without_async_with_connects_on_demand(sim: SmartPoleRtuSim):
    driver = ModbusRtuDriver(POLE, rtu(sim.port_path))
    assert not driver.connected
    assert (await driver.read(["dimming"]))["dimming"] == 100
    assert driver.connected
    await driver.close()
    await driver.close()  # idempotent
    assert not driver.connected
    assert open_buses() == []


async def test_missing_port_is_a_connect_error_listing_what_is_present(tmp_path):
    driver = ModbusRtuDriver(POLE, rtu(str(tmp_path / "ttyUSB9")))
    with pytest.raises(SerialPortNotFound) as error:
        await driver.connect()
    assert "ttyUSB9 not found (present:" in str(error.value)
    await driver.close()
    assert bus_module.open_buses() == []


async def test_the_inter_frame_gap_is_kept(sim: SmartPoleRtuSim):
    gap = 0.05  # exaggerated so the spacing is measurable
    async with ModbusRtuDriver(POLE, rtu(sim.port_path, inter_frame_gap_s=gap)) as driver:
        await driver.read(list(POLE.points))
    stamps = [r.ts for r in sim.traffic.requests()]
    assert len(stamps) == 4
    assert all(later - earlier >= gap * 0.9 for earlier, later in itertools.pairwise(stamps))


# -- mbpoll, a third-party RTU master ---------------------------------------------------------


async def mbpoll(sim: SmartPoleRtuSim, *args: str) -> str:
    assert MBPOLL is not None
    argv = [MBPOLL, "-m", "rtu", "-b", "9600", "-P", "none", "-a", str(sim.unit_id), "-o", "1"]
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    text = out.decode()
    assert proc.returncode == 0, text
    return text


def mbpoll_values(output: str) -> dict[int, int]:
    return {
        int(ref): int(value) for ref, value in re.findall(r"^\[(\d+)\]:\s+(-?\d+)", output, re.M)
    }


needs_mbpoll = pytest.mark.skipif(MBPOLL is None, reason="apt-get install mbpoll")


@needs_mbpoll
async def test_mbpoll_reads_the_pole_over_rtu(sim: SmartPoleRtuSim):
    port = sim.port_path
    holding = await mbpoll(sim, "-t", "4", "-r", "1", "-c", "1", "-1", port)
    assert mbpoll_values(holding) == {1: 100}
    inputs = await mbpoll(sim, "-t", "3", "-r", "1", "-c", "2", "-1", port)
    assert mbpoll_values(inputs) == {
        1: sim.image.get_raw("voltage"),
        2: sim.image.get_raw("current"),
    }
    zero_based = await mbpoll(sim, "-0", "-t", "3", "-r", "0", "-c", "1", "-1", port)
    assert mbpoll_values(zero_based) == {0: sim.image.get_raw("voltage")}
    coil = await mbpoll(sim, "-t", "0", "-r", "1", "-c", "1", "-1", port)
    assert mbpoll_values(coil) == {1: 1}


@needs_mbpoll
async def test_mbpoll_writes_the_pole_over_rtu(sim: SmartPoleRtuSim):
    output = await mbpoll(sim, "-t", "4", "-r", "1", sim.port_path, "55")
    assert "Written 1 references" in output
    await mbpoll(sim, "-t", "0", "-r", "1", sim.port_path, "0")
    assert [(w.point, w.value) for w in sim.writes] == [("dimming", 55), ("lamp_on", False)]
    assert sim.image.get("power") == 0


async def test_a_late_answer_never_crosses_into_the_new_line(sim: SmartPoleRtuSim):
    sim.faults.inject(Fault.delay, delay_s=0.4)
    async with ModbusRtuDriver(POLE, rtu(sim.port_path, timeout_s=0.1)) as driver:
        with pytest.raises(DriverTimeout):
            await driver.read(["dimming"])
        await sim.server.restart()  # while the device still sits on its late answer
        await sim.faults.wait_applied(Fault.delay)
        assert [r.direction for r in sim.traffic] == ["request"]  # the answer was dropped
        # the hang-up came between two requests: the bus reopens the port by itself
        assert (await driver.read(["dimming"]))["dimming"] == 100


async def test_a_port_that_is_not_a_tty_is_a_connect_error(tmp_path):
    not_a_tty = tmp_path / "ttyUSB0"
    not_a_tty.write_bytes(b"")
    driver = ModbusRtuDriver(POLE, rtu(str(not_a_tty)))
    with pytest.raises(ConnectError, match="cannot open"):
        async with driver:
            pass
    assert open_buses() == []
