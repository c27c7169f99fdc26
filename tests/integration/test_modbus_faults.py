"""Every injected fault gives the right typed error, over Modbus TCP and RTU, and the same driver
works again once the fault is cleared."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from device_profiles import load_builtin_profile
from drivers import (
    ConnectError,
    DeviceException,
    Driver,
    DriverError,
    DriverTimeout,
    ModbusTcpSettings,
    ProtocolError,
    open_driver,
)
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.rtu_settings import ModbusRtuSettings
from firmware_sim.faults import (
    Fault,
    FaultInjector,
    TrafficLog,
    corrupt_crc,
    corrupt_mbap,
    garbage_bytes,
    truncate,
)
from firmware_sim.modbus_rtu_server import run_smart_pole_rtu
from firmware_sim.register_image import RegisterImage
from firmware_sim.runner import run_smart_pole

pytestmark = pytest.mark.integration

POLE = load_builtin_profile("smart_pole")
TIMEOUT_S = 0.25


@dataclass
class Target:
    transport: str
    driver: Driver
    faults: FaultInjector
    traffic: TrafficLog
    image: RegisterImage


@pytest.fixture(params=["tcp", "rtu"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "tcp":
        async with run_smart_pole(seed=5, tick_s=None) as tcp_sim:
            settings = ModbusTcpSettings(
                host=tcp_sim.host, port=tcp_sim.port, timeout_s=TIMEOUT_S, retries=0
            )
            async with open_driver(POLE, settings) as driver:
                server = tcp_sim.server
                yield Target("tcp", driver, server.faults, server.traffic, tcp_sim.image)
    else:
        async with run_smart_pole_rtu(seed=5, tick_s=None) as rtu_sim:
            rtu_settings = ModbusRtuSettings(port=rtu_sim.port_path, timeout_s=TIMEOUT_S, retries=0)
            async with ModbusRtuDriver(POLE, rtu_settings) as rtu_driver:
                yield Target("rtu", rtu_driver, rtu_sim.faults, rtu_sim.traffic, rtu_sim.image)


EXPECTED: list[tuple[Fault, type[DriverError]]] = [
    (Fault.no_reply, DriverTimeout),
    (Fault.delay, DriverTimeout),
    (Fault.exception, DeviceException),
    (Fault.corrupt_frame, ProtocolError),
    (Fault.truncated, ProtocolError),
    (Fault.garbage, ProtocolError),
    (Fault.disconnect, ConnectError),
    (Fault.restart, ConnectError),
]


@pytest.mark.parametrize(("fault", "error"), EXPECTED, ids=[f.value for f, _ in EXPECTED])
async def test_fault_gives_its_error_then_the_driver_recovers(
    target: Target, fault: Fault, error: type[DriverError]
):
    assert (await target.driver.read(["dimming"]))["dimming"] == 100
    target.faults.inject(fault, delay_s=2 * TIMEOUT_S, code=6)
    with pytest.raises(error) as raised:
        await target.driver.read(["dimming"])
    if isinstance(raised.value, DeviceException):
        assert (raised.value.code, raised.value.function) == (6, 3)
    target.faults.clear()
    if fault in (Fault.delay, Fault.restart, Fault.disconnect):
        # the late answer has left / the server is back: nothing stale is still on its way
        await target.faults.wait_applied(fault, timeout_s=3)
    assert [a.fault for a in target.faults.applied] == [fault]
    assert (await target.driver.read(["dimming", "voltage"]))["dimming"] == 100
    await target.driver.write("dimming", 35)
    assert target.image.get("dimming") == 35


async def test_a_short_delay_is_only_slow(target: Target):
    target.faults.inject(Fault.delay, delay_s=0.02)
    assert (await target.driver.read(["dimming"]))["dimming"] == 100
    assert target.faults.count(Fault.delay) == 1


async def test_count_hits_exactly_that_many_requests(target: Target):
    target.faults.inject(Fault.exception, count=2, code=2)
    for _ in range(2):
        with pytest.raises(DeviceException):
            await target.driver.read(["dimming"])
    assert (await target.driver.read(["dimming"]))["dimming"] == 100
    assert target.faults.rules == []


async def test_lost_requests_are_not_executed_damaged_answers_are(target: Target):
    target.faults.inject(Fault.no_reply)
    with pytest.raises(DriverTimeout):
        await target.driver.write("dimming", 10)
    assert target.image.get("dimming") == 100
    target.faults.inject(Fault.corrupt_frame)
    with pytest.raises(ProtocolError):
        await target.driver.write("dimming", 20)
    assert target.image.get("dimming") == 20  # executed; only the answer was damaged


async def test_traffic_log_names_the_fault(target: Target):
    target.faults.inject(Fault.garbage)
    with pytest.raises(ProtocolError):
        await target.driver.read(["voltage"])
    request, answer = target.traffic.records[-2:]
    assert (request.direction, request.function, request.fault) == ("request", 4, Fault.garbage)
    assert (answer.direction, answer.fault) == ("answer", Fault.garbage)


async def test_rtu_retry_rides_out_one_lost_request():
    async with run_smart_pole_rtu(seed=5, tick_s=None) as sim:
        settings = ModbusRtuSettings(port=sim.port_path, timeout_s=TIMEOUT_S, retries=1)
        async with ModbusRtuDriver(POLE, settings) as driver:
            sim.faults.inject(Fault.corrupt_frame)
            assert (await driver.read(["dimming"]))["dimming"] == 100
        assert len(sim.traffic.requests()) == 2


# -- the fault helpers ------------------------------------------------------------------------

_RTU = FramerRTU(DecodePDU(False))
_ANSWER = bytes.fromhex("0103020064b9af")  # unit 1, FC3, one register = 100


def test_rtu_answer_fixture_is_valid():
    assert _RTU.decode(_ANSWER)[3] == bytes.fromhex("03020064")


def test_corrupt_crc_is_always_caught():
    damaged = corrupt_crc(_ANSWER)
    assert len(damaged) == len(_ANSWER)
    used, _unit, _tid, frame = _RTU.decode(damaged)
    assert used and not frame


def test_corrupt_mbap_and_truncate():
    frame = bytes.fromhex("000100000005010302006" + "4")
    assert corrupt_mbap(frame)[2:4] != b"\x00\x00"
    assert truncate(frame) == frame[:5]
    assert truncate(b"\x01") == b"\x01"
    with pytest.raises(ValueError, match="MBAP"):
        corrupt_mbap(b"\x00")


def test_garbage_never_forms_a_frame():
    rng = random.Random(1)
    for size in range(1, 300, 7):
        rtu = garbage_bytes(rng, size, rtu=True)
        assert len(rtu) >= 8
        assert not _RTU.decode(rtu)[3]
        tcp = garbage_bytes(rng, size, rtu=False)
        assert tcp[2:4] != b"\x00\x00"


def test_injector_matches_units_and_counts():
    faults = FaultInjector()
    faults.inject(Fault.no_reply, unit_id=3, count=None)
    faults.inject(Fault.exception, count=1)
    assert faults.take(5) is not None  # the exception rule, for any unit
    assert faults.take(5) is None
    for _ in range(3):
        rule = faults.take(3)
        assert rule is not None
        assert rule.fault == Fault.no_reply
    faults.clear(unit_id=4)
    assert len(faults.rules) == 1
    faults.clear(unit_id=3)
    assert faults.rules == []
    with pytest.raises(ValueError, match="count"):
        faults.inject(Fault.delay, count=0)


async def test_wait_applied_times_out_when_nothing_happens():
    faults = FaultInjector()
    with pytest.raises(TimeoutError):
        await faults.wait_applied(Fault.restart, timeout_s=0.01)
    faults.note_applied(Fault.restart, 1, 3)
    await faults.wait_applied(Fault.restart, timeout_s=0.01)


def test_traffic_log_is_bounded():
    log = TrafficLog(size=3)
    for n in range(5):
        log.add("request", 1, 3, bytes([n]))
    assert [r.frame for r in log] == [b"\x02", b"\x03", b"\x04"]
    assert len(log) == 3
