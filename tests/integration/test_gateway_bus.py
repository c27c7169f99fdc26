"""A community gateway's RS-485 bus: five devices, one line, one shared driver bus."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from device_profiles import DeviceProfile, load_builtin_profile
from drivers.errors import DriverTimeout
from drivers.modbus.plan import plan_reads
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.rtu_settings import ModbusRtuSettings
from firmware_sim.faults import Fault
from firmware_sim.gateway import DEFAULT_UNITS, BarrierGateModel, GatewayBusSim, run_gateway_bus

pytestmark = pytest.mark.integration

START = 1_700_038_800.0  # 2023-11-15 09:00 UTC: a working morning
MBPOLL = shutil.which("mbpoll")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def engineering(profile: DeviceProfile, raw: dict[str, Any]) -> dict[str, Any]:
    return {name: profile.points[name].from_raw(value) for name, value in raw.items()}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def bus(clock: Clock) -> AsyncIterator[GatewayBusSim]:
    async with run_gateway_bus(seed=11, tick_s=None, clock=clock) as bus:
        yield bus


@pytest.fixture
async def drivers(bus: GatewayBusSim) -> AsyncIterator[dict[str, ModbusRtuDriver]]:
    out = {
        name: ModbusRtuDriver(
            load_builtin_profile(name),
            ModbusRtuSettings(port=bus.port_path, unit_id=unit, timeout_s=0.3, retries=0),
        )
        for name, unit in bus.units.items()
    }
    yield out
    for driver in out.values():
        await driver.close()


async def test_reads_every_point_of_every_device_coalesced(
    bus: GatewayBusSim, drivers: dict[str, ModbusRtuDriver]
):
    for name, driver in drivers.items():
        raw = await driver.read(list(driver.profile.points))
        assert engineering(driver.profile, raw) == bus.image_of(name).snapshot(), name
    shared = {id(driver.bus) for driver in drivers.values()}
    assert len(shared) == 1
    for name, unit in bus.units.items():
        blocks = plan_reads(drivers[name].profile.points, max_gap=8)
        assert len(bus.traffic.requests(unit)) == len(blocks), name
    # the whole gateway in 10 requests: one per table in use per device
    assert len(bus.traffic.requests()) == 10


async def test_values_are_plausible(bus: GatewayBusSim):
    water = bus.image_of("water_meter").snapshot()
    assert 0 < water["flow_rate"] < 10
    assert water["total_volume"] > 100
    power = bus.image_of("electricity_meter").snapshot()
    assert 220 < power["voltage"] < 240
    assert power["current"] == pytest.approx(
        power["active_power"] / (power["voltage"] * power["power_factor"]), rel=1e-3
    )
    assert 49.9 < power["frequency"] < 50.1
    parking = bus.image_of("parking_sensor").snapshot()
    bays = [parking[f"bay_{n}"] for n in range(1, 9)]
    assert parking["occupied_count"] == sum(bays)
    assert parking["free_count"] == 8 - sum(bays)


async def test_meters_only_grow_and_the_physics_is_deterministic(clock: Clock):
    async def run(seed: int) -> list[dict[str, Any]]:
        clock.now = START
        out = []
        async with run_gateway_bus(seed=seed, tick_s=None, clock=clock) as bus:
            for _ in range(24):  # a day in hours
                clock.now += 3600
                bus.step()
                out.append({n: bus.image_of(n).snapshot() for n in bus.units})
        return out

    first = await run(4)
    assert first == await run(4)
    assert first != await run(5)
    for meter, counter in (("water_meter", "total_volume"), ("electricity_meter", "import_energy")):
        readings = [hour[meter][counter] for hour in first]
        assert readings == sorted(readings)
        assert readings[-1] > readings[0]
    occupancy = {hour["parking_sensor"]["occupied_count"] for hour in first}
    assert len(occupancy) > 1  # bays fill and empty over a day


async def test_barrier_open_command_moves_the_gate(
    bus: GatewayBusSim, drivers: dict[str, ModbusRtuDriver], clock: Clock
):
    gate = drivers["barrier_gate"]
    profile = gate.profile
    [write] = profile.resolve_command("open", {})
    before = (await gate.read(["open_count"]))["open_count"]
    await gate.write(write.point, profile.points[write.point].to_raw(write.value))
    assert [(w.unit_id, w.record.point, w.record.value) for w in bus.writes] == [
        (DEFAULT_UNITS["barrier_gate"], "command", 1)
    ]
    state = await gate.read(["command", "state", "position", "open_count"])
    assert state == {"command": 0, "state": 1, "position": 0, "open_count": before + 1}
    clock.now += 2
    bus.step()
    assert (await gate.read(["position"]))["position"] == 50
    clock.now += 3
    bus.step()
    assert await gate.read(["state", "position", "motor_current"]) == {
        "state": 2,
        "position": 100,
        "motor_current": 0,
    }
    [close] = profile.resolve_command("close", {})
    await gate.write(close.point, profile.points[close.point].to_raw(close.value))
    clock.now += 10
    bus.step()
    assert await gate.read(["state", "position"]) == {"state": 0, "position": 0}


async def test_closing_is_refused_while_a_vehicle_is_on_the_loop(bus: GatewayBusSim):
    model = bus.models["barrier_gate"]
    assert isinstance(model, BarrierGateModel)
    image = bus.image_of("barrier_gate")
    async with ModbusRtuDriver(
        image.profile, ModbusRtuSettings(port=bus.port_path, unit_id=3, timeout_s=0.5)
    ) as gate:
        await gate.write("command", 1)
        model.position, model.state, model.vehicle_present = 100.0, 2, True
        await gate.write("command", 2)
        assert image.get("state") == 2


async def test_remote_unlock_logs_an_event(
    bus: GatewayBusSim, drivers: dict[str, ModbusRtuDriver], clock: Clock
):
    door = drivers["access_controller"]
    before = await door.read(["event_count", "door_locked"])
    assert before["door_locked"] is True
    await door.write("unlock", True)
    after = await door.read(["event_count", "last_event", "door_locked", "unlock"])
    assert after == {
        "event_count": before["event_count"] + 1,
        "last_event": 5,
        "door_locked": False,
        "unlock": True,
    }
    clock.now += 6
    bus.step()
    relocked = await door.read(["door_locked", "unlock"])
    assert relocked == {"door_locked": True, "unlock": False}


async def test_a_silent_device_does_not_stop_the_others(
    bus: GatewayBusSim, drivers: dict[str, ModbusRtuDriver]
):
    water_unit = bus.units["water_meter"]
    bus.faults.inject(Fault.no_reply, unit_id=water_unit, count=None)
    names = ["water_meter", "electricity_meter", "parking_sensor", "water_meter"]
    results = await asyncio.gather(
        *(drivers[n].read(list(drivers[n].profile.points)) for n in names),
        return_exceptions=True,
    )
    assert isinstance(results[0], DriverTimeout)
    assert isinstance(results[3], DriverTimeout)
    assert isinstance(results[1], dict)
    assert isinstance(results[2], dict)
    assert results[2]["occupied_count"] == bus.image_of("parking_sensor").get("occupied_count")
    bus.faults.clear()
    assert "flow_rate" in await drivers["water_meter"].read(["flow_rate"])


async def test_an_exception_on_one_unit_leaves_the_bus_usable(
    bus: GatewayBusSim, drivers: dict[str, ModbusRtuDriver]
):
    bus.faults.inject(Fault.corrupt_frame, unit_id=bus.units["electricity_meter"])
    with pytest.raises(Exception, match="CRC"):
        await drivers["electricity_meter"].read(["voltage"])
    assert (await drivers["parking_sensor"].read(["free_count"]))["free_count"] >= 0
    assert (await drivers["electricity_meter"].read(["voltage"]))["voltage"] > 200


@pytest.mark.skipif(MBPOLL is None, reason="apt-get install mbpoll")
async def test_mbpoll_reads_the_electricity_meter(bus: GatewayBusSim):
    unit = bus.units["electricity_meter"]
    argv = ["-m", "rtu", "-b", "9600", "-P", "none", "-a", str(unit), "-o", "1"]
    argv += ["-0", "-t", "3:float", "-B", "-r", "0", "-c", "1", "-1", bus.port_path]
    assert MBPOLL is not None
    proc = await asyncio.create_subprocess_exec(
        MBPOLL, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0, out.decode()
    voltage = float(out.decode().split("[0]:")[1].split()[0])
    assert voltage == pytest.approx(bus.image_of("electricity_meter").get("voltage"), abs=1e-3)
