"""CoAP: the manhole cover simulator against libcoap's coap-client, and our CoapDriver against it.

Everything runs over real UDP on 127.0.0.1. Timers are kept short with the driver's settings
(``timeout_s=0.1, retries=1``: aiocoap's ACK_TIMEOUT and MAX_RETRANSMIT, set per request through
a ``TransportTuning``), so an unanswered request fails after ~0.55 s instead of aiocoap's
default 93 s. coap-client's own timers only matter where it is told to wait (``-s``, ``-B``).
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device_profiles import DeviceProfile, load_builtin_profile
from drivers import ConfigurationError, ConnectError, DeviceException, DriverTimeout, ProtocolError
from drivers.coap import CoapDeviceException, CoapDriver, CoapSettings
from drivers.errors import EncodeError
from firmware_sim.coap_sensor import ManholeCoverModel, ManholeSensorSim, run_manhole_sensor

pytestmark = pytest.mark.integration

MANHOLE = load_builtin_profile("manhole_cover")
COAP_CLIENT = shutil.which("coap-client") or shutil.which("coap-client-notls")
FAST = {"timeout_s": 0.1, "retries": 1}


def settings_for(sim: ManholeSensorSim, **overrides: Any) -> CoapSettings:
    return CoapSettings(host=sim.host, port=sim.port, **(FAST | overrides))


def profile_with(points: dict[str, Any]) -> DeviceProfile:
    """A CoAP profile of its own for resources the manhole profile does not declare."""
    return DeviceProfile.model_validate(
        {"schema_version": 1, "name": "coap_test", "transport": "coap", "points": points}
    )


@pytest.fixture
async def sim() -> AsyncIterator[ManholeSensorSim]:
    # tick_s=None: values change only when a test says so
    async with run_manhole_sensor(seed=11, tick_s=None) as sim:
        yield sim


@pytest.fixture
async def driver(sim: ManholeSensorSim) -> AsyncIterator[CoapDriver]:
    async with CoapDriver(MANHOLE, settings_for(sim)) as driver:
        yield driver


# -- libcoap's coap-client as the third-party peer -----------------------------------------


async def coap_client(*args: str, timeout_s: float = 10.0) -> str:
    """Run coap-client with ``args``; its stdout. Fails the test on a non-zero exit."""
    return (await coap_client_output(*args, timeout_s=timeout_s))[0]


async def coap_client_output(*args: str, timeout_s: float = 10.0) -> tuple[str, str]:
    """Run coap-client with ``args``; its stdout and its stderr (where it reports 4.xx/5.xx
    answers). Fails the test on a non-zero exit."""
    if COAP_CLIENT is None:
        pytest.fail("coap-client not found: install the Debian package libcoap3-bin", pytrace=False)
    proc = await asyncio.create_subprocess_exec(
        COAP_CLIENT,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"coap-client {args} exited {proc.returncode}: {err.decode()}"
    return out.decode(), err.decode()


async def test_coap_client_reads_tilt(sim: ManholeSensorSim):
    out = await coap_client("-m", "get", f"{sim.endpoint}/tilt")
    assert float(out.strip()) == sim.values["tilt"]
    assert sim.count("GET", "/tilt") == 1


async def test_coap_client_lists_resources(sim: ManholeSensorSim):
    out = await coap_client("-m", "get", f"{sim.endpoint}/.well-known/core")
    links = dict(re.findall(r"<([^>]+)>([^,]*)", out.strip()))
    for path in ("/tilt", "/water-level", "/battery", "/cover", "/config/report-interval"):
        assert path in links, out
        assert ";obs" in links[path], f"{path} is not marked observable: {out}"
    assert 'ct="50"' in links["/cover"]
    assert "/log" in links


async def test_coap_client_observes_two_notifications(sim: ManholeSensorSim):
    before = sim.values["tilt"]
    observer = asyncio.create_task(
        coap_client("-s", "3", "-B", "5", "-w", "-m", "get", f"{sim.endpoint}/tilt")
    )
    await sim.wait_observers("/tilt", 1)
    for tilt in (2.5, 7.5):
        sim.set("tilt", tilt)
        await sim.wait_until(
            lambda tilt=tilt: any(
                r.path == "/tilt" and r.payload == str(tilt).encode() for r in sim.sent
            )
        )
    out = await observer
    lines = [float(line) for line in out.split() if line]
    assert lines[0] == before
    assert [v for v in lines if v in (2.5, 7.5)][:2] == [2.5, 7.5], out
    assert sim.count("GET", "/tilt") <= 2  # the registration (and the deregistration at the end)


async def test_coap_client_writes_report_interval(sim: ManholeSensorSim):
    await coap_client("-m", "put", "-e", "30", f"{sim.endpoint}/config/report-interval")
    assert [(w.method, w.payload, w.value) for w in sim.writes] == [("PUT", b"30", 30)]
    assert sim.values["report_interval"] == 30
    out = await coap_client("-m", "get", f"{sim.endpoint}/config/report-interval")
    assert out.strip() == "30"


@pytest.mark.parametrize(
    "body",
    [
        "1" * 400,  # an integer beyond the float range (math.isfinite raised OverflowError)
        "-" + "9" * 400,
        "1e400",  # a float that is infinite once parsed
        "5",
        "3601",
        "30.5",
        "true",
        '{"report_interval": ' + "7" * 400 + "}",
        "abc",
    ],
    ids=lambda body: body[:12],
)
async def test_coap_client_bad_report_interval_is_4_00(sim: ManholeSensorSim, body: str):
    _, err = await coap_client_output(
        "-m", "put", "-e", body, f"{sim.endpoint}/config/report-interval"
    )
    assert err.startswith("4.00 report interval must be an integer 10-3600"), err
    assert [(w.payload, w.value) for w in sim.writes] == [(body.encode(), None)]
    assert sim.values["report_interval"] == 60  # unchanged


async def test_coap_client_gets_log_blockwise(sim: ManholeSensorSim, tmp_path: Path):
    body = sim.log_body()
    assert len(body) > 2048
    target = tmp_path / "log.txt"
    await coap_client("-b", "64", "-o", str(target), "-m", "get", f"{sim.endpoint}/log")
    assert target.read_bytes() == body
    assert sim.count("GET", "/log") >= math.ceil(len(body) / 64)


# -- our driver: reads -------------------------------------------------------------------------


async def test_reads_every_point(sim: ManholeSensorSim, driver: CoapDriver):
    raw = await driver.read(list(MANHOLE.points))
    assert list(raw) == list(MANHOLE.points)
    assert raw == sim.values
    assert raw["cover_open"] is False
    assert isinstance(raw["tilt"], float)
    assert isinstance(raw["report_interval"], int)


async def test_one_get_per_resource(sim: ManholeSensorSim):
    async with CoapDriver(MANHOLE, settings_for(sim, observe=False)) as driver:
        await driver.read(["cover_open", "temperature", "tilt"])
        await driver.read(["cover_open", "temperature"])
    assert sim.count("GET", "/cover") == 2
    assert sim.count("GET", "/tilt") == 1
    assert sim.observers("/cover") == 0


async def test_observe_pushes_changes_into_read(sim: ManholeSensorSim, driver: CoapDriver):
    first = await driver.read(["tilt", "cover_open", "water_level"])
    assert first["cover_open"] is False
    assert driver.observing("tilt")
    gets = {path: sim.count("GET", path) for path in ("/tilt", "/cover", "/water-level")}
    assert gets == {"/tilt": 1, "/cover": 1, "/water-level": 1}

    tilt_seen, cover_seen = driver.notifications("tilt"), driver.notifications("cover_open")
    sim.lift_cover()
    assert await driver.wait_notification("tilt", after=tilt_seen, timeout_s=2) > 5
    assert await driver.wait_notification("cover_open", after=cover_seen, timeout_s=2) is True
    level_seen = driver.notifications("water_level")
    sim.set("water_level", 160.5)
    await driver.wait_notification("water_level", after=level_seen, timeout_s=2)

    raw = await driver.read(["tilt", "cover_open", "water_level", "temperature"])
    assert raw == {
        "tilt": sim.values["tilt"],
        "cover_open": True,
        "water_level": 160.5,
        "temperature": sim.values["temperature"],
    }
    assert {path: sim.count("GET", path) for path in gets} == gets  # no new GET


async def test_concurrent_reads_register_once(sim: ManholeSensorSim, driver: CoapDriver):
    results = await asyncio.gather(*(driver.read(["tilt", "cover_open"]) for _ in range(5)))
    expected = {"tilt": sim.values["tilt"], "cover_open": False}
    assert results == [expected] * 5
    assert (sim.count("GET", "/tilt"), sim.count("GET", "/cover")) == (1, 1)
    assert sim.observers("/tilt") == 1


async def test_write_to_an_observed_resource_is_read_back(sim: ManholeSensorSim):
    profile = profile_with(
        {
            "interval": {
                "type": "uint16",
                "coap": {"path": "/config/report-interval", "observe": True},
                "writable": True,
            }
        }
    )
    async with CoapDriver(profile, settings_for(sim)) as driver:
        assert await driver.read(["interval"]) == {"interval": 60}
        assert driver.observing("interval")
        await driver.write("interval", 45)
        assert await driver.read(["interval"]) == {"interval": 45}
        assert driver.observing("interval")


async def test_blockwise_read_of_a_large_resource(sim: ManholeSensorSim):
    profile = profile_with({"event_log": {"type": "string", "coap": {"path": "/log"}}})
    async with CoapDriver(profile, settings_for(sim, block_size=64)) as driver:
        raw = await driver.read(["event_log"])
    body = sim.log_body()
    assert len(body) > 2048
    assert raw["event_log"] == body.decode()
    blocks = math.ceil(len(body) / 64)
    # one GET a block; a block request retransmitted (its ACK late on a loaded machine: seen
    # once in a full run) arrives twice at the transport, where the simulator counts
    assert blocks <= sim.count("GET", "/log") <= blocks + 2


async def test_unknown_resource_is_404(sim: ManholeSensorSim):
    profile = profile_with({"nothing": {"type": "float32", "coap": {"path": "/nothing"}}})
    async with CoapDriver(profile, settings_for(sim)) as driver:
        with pytest.raises(DeviceException) as caught:
            await driver.read(["nothing"])
    assert isinstance(caught.value, CoapDeviceException)
    assert (caught.value.code, caught.value.function) == (132, 1)
    assert caught.value.name == "4.04 Not Found"
    assert "GET /nothing answered 4.04 Not Found" in str(caught.value)


# -- writes ------------------------------------------------------------------------------------


async def test_write_puts_plain_text(sim: ManholeSensorSim, driver: CoapDriver):
    assert (await driver.read(["report_interval"]))["report_interval"] == 60
    await driver.write("report_interval", 30)
    assert [(w.path, w.method, w.payload) for w in sim.writes] == [
        ("/config/report-interval", "PUT", b"30")
    ]
    assert sim.values["report_interval"] == 30
    assert (await driver.read(["report_interval"]))["report_interval"] == 30


async def test_write_with_post(sim: ManholeSensorSim):
    async with CoapDriver(MANHOLE, settings_for(sim, write_method="POST")) as driver:
        await driver.write("report_interval", 120)
    assert [(w.method, w.value) for w in sim.writes] == [("POST", 120)]


async def test_refused_write_is_a_device_exception(sim: ManholeSensorSim, driver: CoapDriver):
    with pytest.raises(CoapDeviceException) as caught:
        await driver.write("report_interval", 5)  # the device accepts 10-3600
    assert (caught.value.code, caught.value.function) == (128, 3)
    assert caught.value.name == "4.00 Bad Request"
    assert sim.values["report_interval"] == 60


async def test_caller_mistakes_are_refused_before_sending(
    sim: ManholeSensorSim, driver: CoapDriver
):
    with pytest.raises(ConfigurationError):
        await driver.write("tilt", 1.0)
    with pytest.raises(ConfigurationError):
        await driver.read(["no_such_point"])
    with pytest.raises(EncodeError):
        await driver.write("report_interval", "soon")
    assert len(sim.requests) == 0


# -- faults, recovery ------------------------------------------------------------------------

FAULTS = {
    "drop": ({"drop": True}, DriverTimeout),
    "late": ({"delay_s": 1.0}, DriverTimeout),  # later than max_wait_s (0.55 s)
    "unavailable": ({"unavailable": True}, DeviceException),
    "malformed": ({"malformed": True}, ProtocolError),
}


@pytest.mark.parametrize("point", ["battery", "tilt"])  # polled, and observed (registration)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_maps_to_typed_error_then_recovers(
    sim: ManholeSensorSim, driver: CoapDriver, fault: str, point: str
):
    settings, error = FAULTS[fault]
    for name, value in settings.items():
        setattr(sim.faults, name, value)
    with pytest.raises(error) as caught:
        await driver.read([point])
    if fault == "unavailable":
        assert isinstance(caught.value, CoapDeviceException)
        assert (caught.value.code, caught.value.name) == (163, "5.03 Service Unavailable")
    sim.faults.clear()
    assert (await driver.read([point]))[point] == sim.values[point]
    if point == "tilt":
        assert driver.observing("tilt")


async def test_slow_answer_within_the_deadline_arrives(sim: ManholeSensorSim, driver: CoapDriver):
    sim.faults.delay_s = 0.25  # after aiocoap's empty ACK (0.1 s): a separate response
    assert (await driver.read(["battery"]))["battery"] == sim.values["battery"]


async def test_write_during_outage_then_recovery(sim: ManholeSensorSim, driver: CoapDriver):
    sim.faults.unavailable = True
    with pytest.raises(DeviceException):
        await driver.write("report_interval", 30)
    sim.faults.clear()
    await driver.write("report_interval", 30)
    assert sim.values["report_interval"] == 30


async def test_unreachable_device_is_a_connect_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on the port now: the kernel answers ICMP port unreachable
    async with CoapDriver(MANHOLE, CoapSettings(host="127.0.0.1", port=port, **FAST)) as driver:
        with pytest.raises(ConnectError, match="unreachable"):
            await driver.read(["battery"])


async def test_reobserves_after_a_restart():
    sensor = run_manhole_sensor(seed=3, tick_s=None, max_age_s=1)
    async with sensor as sim, CoapDriver(MANHOLE, settings_for(sim)) as driver:
        await driver.read(["tilt"])
        assert sim.observers("/tilt") == 1
        await sim.restart()  # the device forgets its observers; nobody tells the driver
        assert sim.observers("/tilt") == 0
        sim.set("tilt", 12.5)  # no notification: the new server has no observers
        # Wait out the Max-Age (1 s) of the last representation: the protocol's own timer.
        await asyncio.sleep(driver.freshness_s("tilt") + 0.05)
        assert (await driver.read(["tilt"]))["tilt"] == 12.5  # stale: registered again
        assert sim.observers("/tilt") == 1
        seen = driver.notifications("tilt")
        sim.set("tilt", 13.5)
        assert await driver.wait_notification("tilt", after=seen, timeout_s=2) == 13.5


async def test_read_while_the_device_is_down(sim: ManholeSensorSim, driver: CoapDriver):
    await driver.read(["tilt", "battery"])
    await sim.stop()
    with pytest.raises(ConnectError):
        await driver.read(["battery"])  # ICMP port unreachable also ends the tilt observation
    await sim.start()
    sim.set("tilt", 4.5)
    assert await driver.read(["tilt", "battery"]) == {
        "tilt": 4.5,
        "battery": sim.values["battery"],
    }
    assert sim.observers("/tilt") == 1


async def test_close_is_idempotent_and_the_driver_reconnects(sim: ManholeSensorSim):
    driver = CoapDriver(MANHOLE, settings_for(sim))
    await driver.read(["tilt"])  # connects on demand
    assert driver.observing("tilt")
    await driver.close()
    await driver.close()
    assert not driver.connected
    assert (await driver.read(["battery"]))["battery"] == sim.values["battery"]
    await driver.close()


# -- the simulator's physics -------------------------------------------------------------------


def test_physics_is_deterministic_for_a_seed():
    one, two = ManholeCoverModel(seed=5), ManholeCoverModel(seed=5)
    for _ in range(300):
        one.step()
        two.step()
        assert one.values == two.values
    assert ManholeCoverModel(seed=6).values != ManholeCoverModel(seed=5).values


def test_physics_battery_drains_rain_raises_water_lifting_tilts():
    model = ManholeCoverModel(seed=1)
    battery, water = model.battery, model.water_level
    model.start_rain(ticks=20, cm_per_tick=3.0)
    for _ in range(20):
        model.step()
    assert model.water_level > water + 30
    assert model.battery < battery
    model.lift_cover()
    assert model.open
    assert model.tilt > 5
    model.step()
    assert model.tilt > 5
    model.close_cover()
    assert model.tilt < 5


async def test_sim_values_follow_the_profile(sim: ManholeSensorSim):
    assert sim.profile.name == "manhole_cover"
    assert set(sim.values) == set(sim.profile.points)
    for name, value in sim.values.items():
        sim.profile.points[name].check_value(value)  # within the declared ranges


async def test_sim_ticks_on_its_own_and_notifies():
    sensor = run_manhole_sensor(seed=2, tick_s=0.01)
    async with sensor as sim, CoapDriver(MANHOLE, settings_for(sim)) as driver:
        await driver.read(["temperature"])
        seen = driver.notifications("temperature")
        await driver.wait_notification("temperature", after=seen, timeout_s=5)
