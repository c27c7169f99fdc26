"""The Modbus TCP driver against the smart pole simulator, over real TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from device_profiles import DeviceProfile, load_builtin_profile
from drivers import (
    ConfigurationError,
    ConnectError,
    DeviceException,
    DriverTimeout,
    EncodeError,
    ModbusTcpDriver,
    ModbusTcpSettings,
    ProtocolError,
    open_driver,
)
from firmware_sim import ModbusSimServer, RegisterImage, SmartPoleModel, SmartPoleSim
from firmware_sim.runner import run_smart_pole

pytestmark = pytest.mark.integration

POLE = load_builtin_profile("smart_pole")
MBPOLL = shutil.which("mbpoll")


def settings_for(sim: SmartPoleSim | ModbusSimServer, **overrides: Any) -> ModbusTcpSettings:
    unit = sim.unit_id if isinstance(sim, SmartPoleSim) else sim.unit_ids[0]
    options: dict[str, Any] = {"timeout_s": 0.5, "retries": 0} | overrides
    return ModbusTcpSettings(host=sim.host, port=sim.port, unit_id=unit, **options)


def engineering(profile: DeviceProfile, raw: dict[str, Any]) -> dict[str, Any]:
    return {name: profile.points[name].from_raw(value) for name, value in raw.items()}


@pytest.fixture
async def sim() -> AsyncIterator[SmartPoleSim]:
    # tick_s=None: values only change on writes, so driver and image can be compared exactly
    async with run_smart_pole(seed=7, tick_s=None) as sim:
        yield sim


@pytest.fixture
async def driver(sim: SmartPoleSim) -> AsyncIterator[ModbusTcpDriver]:
    driver = open_driver(POLE, settings_for(sim))
    assert isinstance(driver, ModbusTcpDriver)
    async with driver:
        yield driver


# -- reads ----------------------------------------------------------------------------------


async def test_reads_every_point_as_the_image_holds_it(sim: SmartPoleSim, driver: ModbusTcpDriver):
    raw = await driver.read(list(POLE.points))
    assert list(raw) == list(POLE.points)
    assert engineering(POLE, raw) == sim.image.snapshot()
    assert isinstance(raw["illuminance"], float)
    assert isinstance(raw["voltage"], int)
    assert raw["door_open"] is False
    assert raw["lamp_fault"] is False


async def test_raw_values_are_unscaled(sim: SmartPoleSim, driver: ModbusTcpDriver):
    raw = await driver.read(["voltage", "power", "dimming"])
    assert raw["voltage"] == sim.image.get_raw("voltage")
    assert raw["voltage"] == round(sim.image.get("voltage") * 10)
    assert raw["dimming"] == 100


async def test_values_are_plausible(driver: ModbusTcpDriver):
    values = engineering(POLE, await driver.read(list(POLE.points)))
    assert 220 <= values["voltage"] <= 240
    assert values["lamp_on"] is True
    assert values["power"] == pytest.approx(150, abs=3)
    assert values["current"] == pytest.approx(values["power"] / values["voltage"], abs=0.002)
    assert values["tilt"] == pytest.approx(0.3, abs=0.2)
    assert -40 <= values["temperature"] <= 80
    assert 0 <= values["humidity"] <= 100
    assert values["illuminance"] >= 0
    assert values["energy"] > 0
    assert (values["door_open"], values["one_key_alarm"], values["supply_fault"]) == (
        False,
        False,
        False,
    )


async def test_duplicate_and_empty_reads(driver: ModbusTcpDriver):
    assert await driver.read([]) == {}
    assert list(await driver.read(["dimming", "voltage", "dimming"])) == ["dimming", "voltage"]


async def test_unknown_point_is_a_configuration_error(driver: ModbusTcpDriver):
    with pytest.raises(ConfigurationError, match="no point 'nope'"):
        await driver.read(["voltage", "nope"])


# -- writes ---------------------------------------------------------------------------------


async def test_dimming_write_is_logged_and_power_follows_at_once(
    sim: SmartPoleSim, driver: ModbusTcpDriver
):
    await driver.write("dimming", 40)
    record = sim.writes[-1]
    assert (record.point, record.raw, record.value, record.in_range) == ("dimming", 40, 40, True)
    values = engineering(POLE, await driver.read(["dimming", "power", "current", "voltage"]))
    assert values["dimming"] == 40
    assert values["power"] == pytest.approx(60, abs=1.5)
    assert values["current"] == pytest.approx(values["power"] / values["voltage"], abs=0.002)


async def test_lamp_off_drops_power_to_zero_and_on_restores_it(
    sim: SmartPoleSim, driver: ModbusTcpDriver
):
    await driver.write("dimming", 80)
    await driver.write("lamp_on", False)
    assert [(w.point, w.value) for w in sim.writes] == [("dimming", 80), ("lamp_on", False)]
    off = engineering(POLE, await driver.read(["lamp_on", "power", "current"]))
    assert off == {"lamp_on": False, "power": 0, "current": 0}
    await driver.write("lamp_on", True)
    on = engineering(POLE, await driver.read(["power"]))
    assert on["power"] == pytest.approx(120, abs=2)


def test_energy_counter_integrates_power():
    clock = [1_700_000_000.0]
    image = RegisterImage(POLE, clock=lambda: clock[0])
    model = SmartPoleModel(image, seed=1, clock=lambda: clock[0])
    start = image.get("energy")
    assert isinstance(start, float)
    readings = []
    for _ in range(6):  # 6 x 10 minutes at ~150 W: ~0.15 kWh
        clock[0] += 600
        model.step()
        readings.append(image.get("energy"))
    assert readings == sorted(readings)
    assert readings[-1] - start == pytest.approx(0.15, abs=0.015)


async def test_out_of_range_write_is_accepted_and_flagged(
    sim: SmartPoleSim, driver: ModbusTcpDriver
):
    # the driver moves raw values; refusing 150 % is the agent's job (Point.check_value)
    await driver.write("dimming", 150)
    assert sim.writes[-1].in_range is False
    assert sim.image.get("dimming") == 150
    power = engineering(POLE, await driver.read(["power"]))["power"]
    assert power == pytest.approx(150, abs=3)  # the device clamps to 100 %


async def test_driver_refuses_read_only_points_and_bad_values(
    sim: SmartPoleSim, driver: ModbusTcpDriver
):
    with pytest.raises(ConfigurationError, match="not writable"):
        await driver.write("voltage", 2300)
    with pytest.raises(EncodeError):
        await driver.write("dimming", 70000)
    with pytest.raises(EncodeError):
        await driver.write("lamp_on", 1)
    assert sim.writes == []


async def test_concurrent_reads_and_writes_do_not_interleave(
    sim: SmartPoleSim, driver: ModbusTcpDriver
):
    names = list(POLE.points)
    jobs = [driver.read(names) for _ in range(20)]
    jobs += [driver.write("dimming", level) for level in (10, 20, 30)]
    results = await asyncio.gather(*jobs)
    for result in results[:20]:
        assert isinstance(result, dict)
        assert list(result) == names
    assert [w.value for w in sim.writes] == [10, 20, 30]


# -- errors and reconnection ----------------------------------------------------------------

GHOST = DeviceProfile.model_validate(
    {
        "schema_version": 1,
        "name": "ghost",
        "transport": "modbus",
        "points": {
            "ghost": {"type": "uint16", "modbus": {"table": "input_register", "address": 100}},
            "ghost_setpoint": {
                "type": "uint16",
                "writable": True,
                "modbus": {"table": "holding_register", "address": 5},
            },
        },
    }
)


async def test_undeclared_address_is_a_device_exception(sim: SmartPoleSim):
    driver = open_driver(GHOST, settings_for(sim))
    assert isinstance(driver, ModbusTcpDriver)
    async with driver:
        with pytest.raises(DeviceException) as read_error:
            await driver.read(["ghost"])
        assert (read_error.value.code, read_error.value.function) == (2, 4)
        assert read_error.value.name == "ILLEGAL DATA ADDRESS"
        with pytest.raises(DeviceException) as write_error:
            await driver.write("ghost_setpoint", 1)
        assert (write_error.value.code, write_error.value.function) == (2, 6)
        # an exception answer is not a broken link: the same connection goes on
        assert driver.connected
    assert sim.writes == []


async def test_stopped_device_fails_then_recovers_without_a_new_driver(
    sim: SmartPoleSim, driver: ModbusTcpDriver
):
    assert (await driver.read(["dimming"]))["dimming"] == 100
    await sim.server.stop()
    with pytest.raises((ConnectError, DriverTimeout)):
        await driver.read(["dimming"])
    with pytest.raises(ConnectError):  # nothing listens: the reconnect is refused
        await driver.read(["dimming"])
    with pytest.raises(ConnectError):
        await driver.write("dimming", 30)
    await sim.server.start()  # same port as before
    assert (await driver.read(["dimming"]))["dimming"] == 100
    await driver.write("dimming", 30)
    assert sim.image.get("dimming") == 30


async def test_unreachable_device_is_a_connect_error(sim: SmartPoleSim):
    port = sim.port
    await sim.server.stop()
    driver = open_driver(POLE, ModbusTcpSettings(host="127.0.0.1", port=port, timeout_s=0.5))
    with pytest.raises(ConnectError, match="cannot connect"):
        async with driver:
            pass
    with pytest.raises(ConnectError):
        await driver.read(["dimming"])
    await driver.close()


async def test_driver_is_reusable_but_not_reentrant(sim: SmartPoleSim):
    driver = open_driver(POLE, settings_for(sim))
    async with driver:
        with pytest.raises(ConfigurationError, match="not reentrant"):
            async with driver:
                pass
    assert isinstance(driver, ModbusTcpDriver)
    assert not driver.connected
    async with driver:
        assert (await driver.read(["dimming"]))["dimming"] == 100


@contextlib.asynccontextmanager
async def raw_server(
    answer: Callable[[bytes], bytes | None], connections: list[int] | None = None
) -> AsyncIterator[int]:
    """A TCP server that answers each 12-byte Modbus TCP request with ``answer(request)``;
    ``connections`` gets one entry per client connection."""
    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        if connections is not None:
            connections.append(len(handlers))
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                reply = answer(await reader.readexactly(12))
                if reply is not None:
                    writer.write(reply)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for writer in writers:
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=2)


async def test_silent_device_is_a_timeout_and_the_next_call_reconnects():
    requests: list[bytes] = []

    def silent(request: bytes) -> None:
        requests.append(request)

    connections: list[int] = []
    async with raw_server(silent, connections) as port:
        settings = ModbusTcpSettings(host="127.0.0.1", port=port, timeout_s=0.1, retries=1)
        async with open_driver(POLE, settings) as driver:
            with pytest.raises(DriverTimeout, match="no answer"):
                await driver.read(["voltage"])
            assert len(requests) == 2  # the request and one retry
            with pytest.raises(DriverTimeout):
                await driver.read(["voltage"])
    # a timed-out connection may still deliver a stale answer: it is dropped, not reused
    assert connections == [1, 2]


async def test_wrong_answer_is_a_protocol_error():
    def holding_instead_of_input(request: bytes) -> bytes:
        tid = request[:2]  # MBAP: tid, protocol 0, length 5, unit; PDU: FC3, 2 bytes, 0x0001
        return tid + bytes([0, 0, 0, 5, request[6], 3, 2, 0, 1])

    async with raw_server(holding_instead_of_input) as port:
        settings = ModbusTcpSettings(host="127.0.0.1", port=port, timeout_s=0.5, retries=0)
        async with open_driver(POLE, settings) as driver:
            with pytest.raises(ProtocolError, match="unexpected answer"):
                await driver.read(["voltage"])


# -- a generic profile on a generic image ---------------------------------------------------

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
            "label": {
                "type": "string",
                "writable": True,
                "modbus": {"table": "holding_register", "address": 20, "length": 4},
            },
            "counter": {"type": "int64", "modbus": {"table": "input_register", "address": 7}},
        },
    }
)


async def test_every_write_function_against_a_generic_image():
    image = RegisterImage(LAB)
    image.set("counter", -(2**40))
    image.set("mode_b", True)
    async with (
        ModbusSimServer(image, port=0, unit_ids=(3,)) as server,
        open_driver(LAB, settings_for(server)) as driver,
    ):
        await driver.write("relay", True)  # FC5
        await driver.write("mode_a", True)  # FC3 + FC6, keeps bit 3
        await driver.write("setpoint", 21.5)  # FC16
        await driver.write("label", "pole")  # FC16
        raw = await driver.read(list(LAB.points))
    assert raw == {
        "relay": True,
        "mode_a": True,
        "mode_b": True,
        "setpoint": 21.5,
        "label": "pole",
        "counter": -(2**40),
    }
    assert image.get_raw("mode_b") is True
    assert [w.point for w in image.writes] == ["relay", "mode_a", "mode_b", "setpoint", "label"]


# -- the simulator itself -------------------------------------------------------------------


def test_model_is_deterministic_for_a_seed_and_clock():
    def run(seed: int) -> list[dict[str, Any]]:
        clock = [1_700_000_000.0]
        image = RegisterImage(POLE, clock=lambda: clock[0])
        model = SmartPoleModel(image, seed=seed, clock=lambda: clock[0])
        out = []
        for _ in range(5):
            clock[0] += 60
            model.step()
            out.append(image.snapshot())
        return out

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize(("hour", "low", "high"), [(0, 0, 10), (12, 10_000, 100_000)])
def test_illuminance_follows_the_sun(hour: int, low: float, high: float):
    midnight = 1_700_006_400.0  # 2023-11-15 00:00 UTC
    image = RegisterImage(POLE)
    SmartPoleModel(image, seed=3, clock=lambda: midnight + hour * 3600)
    assert low <= image.get("illuminance") <= high


def test_forced_points_hold_until_released():
    image = RegisterImage(POLE)
    model = SmartPoleModel(image, seed=3)
    model.force("door_open", True)
    model.force("tilt", 7.5)
    model.step()
    assert (image.get("door_open"), image.get("tilt")) == (True, 7.5)
    model.release("door_open")
    assert image.get("door_open") is False


async def test_ticker_updates_the_image():
    reads = 0
    ticked = asyncio.Event()

    def clock() -> float:  # the model reads the clock once per step
        nonlocal reads
        reads += 1
        if reads >= 5:  # construction reads it twice: this is the third tick
            ticked.set()
        return time.time()

    async with run_smart_pole(seed=1, tick_s=0.01, clock=clock) as sim:
        first = sim.image.snapshot()
        async with asyncio.timeout(3):
            await ticked.wait()
        assert sim.image.snapshot() != first


# -- a third-party master: mbpoll -----------------------------------------------------------


async def mbpoll(sim: SmartPoleSim, *args: str) -> str:
    assert MBPOLL is not None
    argv = [MBPOLL, "-m", "tcp", "-p", str(sim.port), "-a", str(sim.unit_id), "-o", "2", *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=5)
    text = out.decode()
    assert proc.returncode == 0, text
    return text


def mbpoll_values(output: str) -> dict[int, int]:
    return {
        int(ref): int(value) for ref, value in re.findall(r"^\[(\d+)\]:\s+(-?\d+)", output, re.M)
    }


@pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed (apt-get install mbpoll)")
async def test_mbpoll_reads_the_simulator(sim: SmartPoleSim):
    # mbpoll counts references from 1: -r 1 is PDU address 0. -t 4 holding, -t 3 input regs.
    dimming = mbpoll_values(await mbpoll(sim, "-t", "4", "-r", "1", "-c", "1", "-1", "127.0.0.1"))
    assert dimming == {1: 100}
    inputs = mbpoll_values(await mbpoll(sim, "-t", "3", "-r", "1", "-c", "2", "-1", "127.0.0.1"))
    assert inputs == {1: sim.image.get_raw("voltage"), 2: sim.image.get_raw("current")}
    zero_based = mbpoll_values(
        await mbpoll(sim, "-0", "-t", "3", "-r", "0", "-c", "1", "-1", "127.0.0.1")
    )
    assert zero_based == {0: sim.image.get_raw("voltage")}


@pytest.mark.skipif(MBPOLL is None, reason="mbpoll is not installed (apt-get install mbpoll)")
async def test_mbpoll_writes_the_simulator(sim: SmartPoleSim):
    output = await mbpoll(sim, "-t", "4", "-r", "1", "127.0.0.1", "55")
    assert "Written 1 references" in output
    assert sim.image.get("dimming") == 55
    assert [(w.point, w.value) for w in sim.writes] == [("dimming", 55)]
    assert math.isclose(sim.image.get("power"), 150 * 0.55, abs_tol=2)
