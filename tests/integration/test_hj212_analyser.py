"""The HJ 212 driver against the simulated pollution analyser: over a pseudo-terminal, over
TCP with the analyser dialling in (as loggers do), and over TCP with the driver dialling."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from device_profiles import load_builtin_profile
from drivers.errors import ConfigurationError, ConnectError, DriverTimeout
from drivers.hj212 import (
    AckTimeout,
    CommandRefused,
    CrcMismatch,
    DataUpload,
    GarbageError,
    Hj212Driver,
    Hj212SerialSettings,
    Hj212TcpSettings,
    LengthMismatch,
)
from firmware_sim.pollution_analyser import (
    DEFAULT_MN,
    PollutionAnalyser,
    run_pollution_analyser,
)

pytestmark = pytest.mark.integration

PROFILE = load_builtin_profile("pollution_monitor")
RTD_POINTS = [n for n, p in PROFILE.points.items() if p.hj212.field == "Rtd"]
TRANSPORTS = ["pty", "tcp_listen", "tcp_connect"]


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 8, 0, 5)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Pair:
    sim: PollutionAnalyser
    driver: Hj212Driver
    clock: FakeClock


async def open_pair(
    transport: str,
    clock: FakeClock,
    *,
    sim_options: dict[str, Any] | None = None,
    driver_options: dict[str, Any] | None = None,
) -> AsyncIterator[Pair]:
    sim_opts: dict[str, Any] = {
        "seed": 3,
        "rtd_interval_s": None,
        "timeout_s": 0.3,
        "retries": 2,
        "clock": clock,
    } | (sim_options or {})
    drv_opts: dict[str, Any] = {"timeout_s": 0.3, "retries": 1, "mn": DEFAULT_MN} | (
        driver_options or {}
    )
    if transport == "pty":
        async with run_pollution_analyser(**sim_opts) as sim:
            assert sim.pty_path is not None
            settings = Hj212SerialSettings(port=sim.pty_path, **drv_opts)
            async with Hj212Driver(PROFILE, settings) as driver:
                yield Pair(sim, driver, clock)
    elif transport == "tcp_listen":
        settings_l = Hj212TcpSettings(listen_host="127.0.0.1", listen_port=0, **drv_opts)
        async with Hj212Driver(PROFILE, settings_l) as driver:
            target = ("127.0.0.1", driver.bound_port)
            async with run_pollution_analyser(
                transport="tcp_client", connect_to=target, **sim_opts
            ) as sim:
                await sim.wait_connected()
                await driver.wait_for(lambda: bool(driver.sessions), 5)
                yield Pair(sim, driver, clock)
    else:
        async with run_pollution_analyser(transport="tcp_server", **sim_opts) as sim:
            settings_c = Hj212TcpSettings(host="127.0.0.1", port=sim.port, **drv_opts)
            async with Hj212Driver(PROFILE, settings_c) as driver:
                await sim.wait_connected()
                yield Pair(sim, driver, clock)


@pytest.fixture(params=TRANSPORTS)
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    async for p in open_pair(request.param, FakeClock()):
        yield p


def expected(upload: DataUpload, field: str = "Rtd") -> dict[str, float]:
    return {
        name: float(upload.pollutants[p.hj212.code].fields[field])
        for name, p in PROFILE.points.items()
        if p.hj212.field == field
    }


def has_reading(driver: Hj212Driver) -> bool:
    return driver.reading("a34004") is not None


# -- data -------------------------------------------------------------------------------


async def test_realtime_values_match_the_simulator(pair: Pair) -> None:
    upload = await pair.sim.send_realtime()
    assert await pair.driver.read(RTD_POINTS) == expected(upload)
    reading = pair.driver.reading("a34004")
    assert reading is not None
    assert reading.flag == "N"
    assert reading.data_time == datetime(2024, 5, 1, 8, 0, 5)
    assert pair.sim.sent[-1].cn == "2011"
    assert pair.sim.sent[-1].flag == 5
    assert pair.sim.received[-1].cn == "9014"  # the driver answered the upload


async def test_aggregates_are_consistent_with_realtime_values(pair: Pair) -> None:
    uploads = []
    for _ in range(6):
        uploads.append(await pair.sim.send_realtime())
        pair.clock.advance(5)
    minute = await pair.sim.send_minute()
    hour = await pair.sim.send_hour()
    day = await pair.sim.send_day()
    assert minute is not None
    assert hour is not None
    assert day is not None
    assert pair.driver.records["2051"][-1] == minute
    assert pair.driver.records["2061"][-1] == hour
    assert pair.driver.records["2031"][-1] == day
    assert minute.data_time == datetime(2024, 5, 1, 8, 0)
    assert hour.data_time == datetime(2024, 5, 1, 8, 0)
    assert day.data_time == datetime(2024, 5, 1, 0, 0)
    assert await pair.driver.history("2031", day.data_time, day.data_time) == [day]
    for record in (minute, hour, day):
        for code, pollutant in record.pollutants.items():
            series = [u.pollutants[code].number("Rtd") for u in uploads]
            values = [v for v in series if v is not None]
            decimals = len(pollutant.fields["Avg"].partition(".")[2])
            assert pollutant.number("Min") == min(values)
            assert pollutant.number("Max") == max(values)
            assert math.isclose(
                pollutant.number("Avg") or 0.0,
                sum(values) / len(values),
                abs_tol=0.5 * 10**-decimals + 1e-9,
            )
            assert pollutant.flag == "N"
    raw = await pair.driver.read(["pm25_avg_1min"])
    assert raw == {"pm25_avg_1min": minute.pollutants["a34004"].number("Avg")}


async def test_minute_record_follows_the_device_clock(pair: Pair) -> None:
    await pair.sim.send_realtime()
    pair.clock.advance(60)  # into the next minute: the next sample closes the last one
    await pair.sim.send_realtime()
    records = pair.driver.records["2051"]
    assert len(records) == 1
    assert records[0].data_time == datetime(2024, 5, 1, 8, 0)


async def test_injected_flag_is_reported_and_aggregated(pair: Pair) -> None:
    pair.sim.set_flag("a34004", "C")
    await pair.sim.send_realtime()
    pair.sim.set_flag("a34004", "N")
    await pair.sim.send_realtime()
    minute = await pair.sim.send_minute()
    assert minute is not None
    assert minute.pollutants["a34004"].flag == "C"
    assert minute.pollutants["a21026"].flag == "N"
    reading = pair.driver.reading("a34004")
    assert reading is not None
    assert reading.flag == "N"


async def test_no_value_yet_is_a_timeout(pair: Pair) -> None:
    with pytest.raises(DriverTimeout, match="pm25"):
        await pair.driver.read(["pm25"])
    with pytest.raises(ConfigurationError):
        await pair.driver.read(["nope"])
    with pytest.raises(ConfigurationError):
        await pair.driver.write("pm25", 1.0)


# -- requests ---------------------------------------------------------------------------


async def test_time_get_and_set(pair: Pair) -> None:
    assert await pair.driver.get_time() == datetime(2024, 5, 1, 8, 0, 5)
    await pair.driver.set_time(datetime(2025, 1, 2, 3, 4, 5))
    assert await pair.driver.get_time() == datetime(2025, 1, 2, 3, 4, 5)
    assert [f.cn for f in pair.sim.received if f.cn.startswith("10")] == ["1011", "1012", "1011"]


async def test_history_returns_the_stored_records(pair: Pair) -> None:
    for _ in range(4):  # four minutes of two samples each
        await pair.sim.send_realtime()
        pair.clock.advance(30)
        await pair.sim.send_realtime()
        pair.clock.advance(30)
    await pair.sim.send_minute()
    stored = pair.sim.history["2051"]
    assert len(stored) == 4
    begin, end = datetime(2024, 5, 1, 8, 1), datetime(2024, 5, 1, 8, 2)
    got = await pair.driver.history("2051", begin, end)
    assert got == [r for r in stored if begin <= r.data_time <= end]
    assert len(got) == 2
    assert await pair.driver.history("2061", datetime(2000, 1, 1), datetime(2000, 1, 2)) == []
    with pytest.raises(ConfigurationError):
        await pair.driver.history("2011", begin, end)


async def test_large_history_answer_in_split_packets() -> None:
    async for p in open_pair("pty", FakeClock()):
        await p.sim.send_realtime()
        await p.sim.send_minute()
        p.sim.inject("split")
        await p.sim.send_realtime()
        split = [f for f in p.sim.sent if f.pnum is not None]
        assert len(split) > 1
        total = split[0].pnum
        assert total is not None
        assert {f.pno for f in split} == set(range(1, total + 1))
        upload = p.sim.realtime[-1]
        assert await p.driver.read(RTD_POINTS) == expected(upload)


async def test_unanswered_request_is_sent_again(pair: Pair) -> None:
    pair.sim.inject("no_answer")
    assert await pair.driver.get_time() == datetime(2024, 5, 1, 8, 0, 5)
    asks = [f for f in pair.sim.received if f.cn == "1011"]
    assert len(asks) == 2
    assert asks[0].qn == asks[1].qn
    pair.sim.inject("no_answer", 2)  # more than the driver's one retry
    with pytest.raises(AckTimeout):
        await pair.driver.get_time()


async def test_wrong_password_is_refused() -> None:
    async for p in open_pair("pty", FakeClock(), driver_options={"pw": "999999"}):
        with pytest.raises(CommandRefused) as info:
            await p.driver.get_time()
        assert info.value.code == 3
        assert info.value.answer == "QnRtn"


async def test_analyser_resends_uploads_the_driver_does_not_answer() -> None:
    async for p in open_pair("pty", FakeClock(), driver_options={"auto_ack": False}):
        upload = await p.sim.send_realtime()
        sent = [f for f in p.sim.sent if f.cn == "2011"]
        assert len(sent) == 3  # first try + 2 retries, same QN
        assert len({f.qn for f in sent}) == 1
        assert p.sim.unanswered == sent[:1]
        assert await p.driver.read(RTD_POINTS) == expected(upload)  # the data arrived anyway


# -- faults -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["pty", "tcp_listen"])
@pytest.mark.parametrize(
    ("fault", "error"),
    [("bad_crc", CrcMismatch), ("bad_length", LengthMismatch), ("garbage", GarbageError)],
)
async def test_fault_is_reported_typed_and_recovered(
    transport: str, fault: Any, error: type[Exception]
) -> None:
    async for p in open_pair(transport, FakeClock()):
        p.sim.inject(fault)
        upload = await p.sim.send_realtime()  # a broken first try is re-sent intact
        assert any(isinstance(e, error) for e in p.driver.errors)
        assert await p.driver.read(RTD_POINTS) == expected(upload)


@pytest.mark.parametrize(
    ("fault", "error"), [("bad_crc", CrcMismatch), ("bad_length", LengthMismatch)]
)
async def test_read_raises_the_frame_error_until_a_good_frame(
    fault: Any, error: type[Exception]
) -> None:
    async for p in open_pair("pty", FakeClock(), sim_options={"upload_ack": False}):
        p.sim.inject(fault)
        await p.sim.send_realtime()
        if not p.driver.errors:
            await p.driver.next_error(5)
        with pytest.raises(error):
            await p.driver.read(["pm25"])
        upload = await p.sim.send_realtime()
        await p.driver.wait_for(functools.partial(has_reading, p.driver), 5)
        assert await p.driver.read(RTD_POINTS) == expected(upload)


async def test_frames_of_another_mn_are_ignored() -> None:
    async for p in open_pair("tcp_listen", FakeClock(), driver_options={"mn": "OTHER1"}):
        await p.sim.send_realtime()
        assert p.driver.ignored == 1
        with pytest.raises(DriverTimeout):
            await p.driver.read(["pm25"])


async def test_periodic_uploads() -> None:
    async with run_pollution_analyser(seed=5, rtd_interval_s=0.02, timeout_s=0.5) as sim:
        assert sim.pty_path is not None
        settings = Hj212SerialSettings(port=sim.pty_path, timeout_s=0.5)
        async with Hj212Driver(PROFILE, settings) as driver:
            await driver.wait_for(lambda: len(driver.records["2011"]) >= 3, 5)
            raw = await driver.read(["pm25", "noise"])
            assert 0 <= float(raw["pm25"]) <= 1000
            assert 20 <= float(raw["noise"]) <= 130


async def test_tcp_logger_reconnects_after_the_driver_restarts() -> None:
    clock = FakeClock()
    settings = Hj212TcpSettings(listen_host="127.0.0.1", listen_port=0, timeout_s=0.3)
    driver = Hj212Driver(PROFILE, settings)
    await driver.connect()
    port = driver.bound_port
    async with run_pollution_analyser(
        transport="tcp_client",
        connect_to=("127.0.0.1", port),
        rtd_interval_s=None,
        timeout_s=0.3,
        retries=0,
        clock=clock,
    ) as sim:
        await sim.wait_connected()
        await driver.close()
        settings2 = Hj212TcpSettings(listen_host="127.0.0.1", listen_port=port, timeout_s=0.3)
        async with Hj212Driver(PROFILE, settings2) as driver2:
            await driver2.wait_for(lambda: bool(driver2.sessions), 5)
            await sim.wait_connected()
            upload = await sim.send_realtime()
            assert await driver2.read(RTD_POINTS) == expected(upload)


async def test_values_go_stale() -> None:
    now = [100.0]
    async with run_pollution_analyser(seed=1, rtd_interval_s=None, timeout_s=0.3) as sim:
        assert sim.pty_path is not None
        settings = Hj212SerialSettings(port=sim.pty_path, timeout_s=0.3, staleness_s=30)
        async with Hj212Driver(PROFILE, settings, monotonic=lambda: now[0]) as driver:
            upload = await sim.send_realtime()
            now[0] += 29
            assert await driver.read(["pm25"]) == {"pm25": expected(upload)["pm25"]}
            now[0] += 2
            with pytest.raises(DriverTimeout, match="30"):
                await driver.read(["pm25"])


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_no_fd_is_left_open() -> None:
    before = open_fds()
    async for p in open_pair("pty", FakeClock()):
        await p.sim.send_realtime()
        assert len(open_fds() - before) >= 3  # master, slave held by the sim, driver's slave
    assert open_fds() - before == set()


async def test_unreachable_devices_are_connect_errors() -> None:
    serial = Hj212SerialSettings(port="/dev/does-not-exist-hj212")
    with pytest.raises(ConnectError):
        await Hj212Driver(PROFILE, serial).connect()
    async with run_pollution_analyser(transport="tcp_server", rtd_interval_s=None) as sim:
        port = sim.port
    tcp = Hj212TcpSettings(host="127.0.0.1", port=port, timeout_s=0.5)
    driver = Hj212Driver(PROFILE, tcp)
    with pytest.raises(ConnectError):
        await driver.read(["pm25"])
    await driver.close()
