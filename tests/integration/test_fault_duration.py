"""One rule for the faults of every simulator: until cleared, unless a count N is given.

The simulators of a site run in-process and are driven through the control endpoint's
handler (as ``firmware-sim fault`` drives them); real clients see the faults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from device_profiles import load_builtin_profile
from drivers import CoapDriver, CoapSettings, ModbusTcpDriver, ModbusTcpSettings
from drivers.errors import DeviceException, DriverTimeout
from firmware_sim.control import ControlServer
from firmware_sim.control_endpoint import ControlError
from firmware_sim.scenario import Site, parse_scenario, run_scenario

pytestmark = pytest.mark.integration

SCENARIO = {
    "sims": [
        {"name": "pole-1", "kind": "smart_pole_tcp", "port": 0, "tick_s": None},
        {"name": "manhole-1", "kind": "manhole_cover", "port": 0, "tick_s": None},
        {"name": "nb-1", "kind": "nbiot_modem"},
        {"name": "aq-1", "kind": "pollution_analyser", "transport": "tcp_server", "port": 0},
    ]
}
REQUESTS = 3  # more than the old default of one request


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with run_scenario(parse_scenario(SCENARIO, "test")) as site:
        yield site


def _pending(control: ControlServer, name: str) -> list[str]:
    (status,) = [s for s in control.handle({"op": "status"}) if s["name"] == name]
    faults: list[str] = status["faults"]
    return faults


async def test_every_simulator_keeps_a_fault_until_cleared_unless_counted(site: Site) -> None:
    control = ControlServer(site.sims, "unused")
    # the Modbus pole: no count, so every request is lost until cleared
    pole = site.sim("pole-1").agent_devices()[0]["connection"]
    settings = ModbusTcpSettings(host=pole["host"], port=pole["port"], timeout_s=0.2, retries=0)
    done = control.handle({"op": "fault", "sim": "pole-1", "fault": "no_reply"})
    assert done == "no_reply on pole-1: every request until cleared"
    async with ModbusTcpDriver(load_builtin_profile("smart_pole"), settings) as driver:
        for _ in range(REQUESTS):
            with pytest.raises(DriverTimeout):
                await driver.read(["voltage"])
        assert _pending(control, "pole-1") == ["no_reply (every request until cleared)"]
        control.handle({"op": "clear", "sim": "pole-1"})
        assert "voltage" in await driver.read(["voltage"])

    # the CoAP sensor: until cleared, and (new) a count as for the others
    cover = site.sim("manhole-1").agent_devices()[0]["connection"]
    coap = CoapSettings(host=cover["host"], port=cover["port"], observe=False, timeout_s=0.2)
    async with CoapDriver(load_builtin_profile("manhole_cover"), coap) as driver:
        done = control.handle({"op": "fault", "sim": "manhole-1", "fault": "unavailable"})
        assert done == "unavailable on manhole-1: every request until cleared"
        for _ in range(REQUESTS):
            with pytest.raises(DeviceException, match=r"5\.03 Service Unavailable"):
                await driver.read(["tilt"])
        control.handle({"op": "clear", "sim": "manhole-1"})
        done = control.handle(
            {"op": "fault", "sim": "manhole-1", "fault": "unavailable", "count": 2}
        )
        assert done == "unavailable on manhole-1: next 2 request(s)"
        assert _pending(control, "manhole-1") == ["unavailable (next 2 request(s))"]
        for _ in range(2):
            with pytest.raises(DeviceException, match=r"5\.03 Service Unavailable"):
                await driver.read(["tilt"])
        assert "tilt" in await driver.read(["tilt"])  # the count is spent: the fault ended
        assert _pending(control, "manhole-1") == []

    # the modem and the analyser: the same rule, as their status says
    done = control.handle({"op": "fault", "sim": "nb-1", "fault": "garbage"})
    assert done == "garbage on nb-1: every command starting with 'AT' until cleared"
    assert _pending(control, "nb-1") == ["garbage 'AT' (until cleared)"]
    done = control.handle({"op": "fault", "sim": "aq-1", "fault": "bad_crc"})
    assert done == "bad_crc on aq-1: every frame until cleared"
    assert _pending(control, "aq-1") == ["bad_crc (until cleared)"]
    control.handle({"op": "fault", "sim": "aq-1", "fault": "split", "count": 2})
    assert _pending(control, "aq-1") == ["bad_crc (until cleared)", "split (2 left)"]


async def test_a_count_of_zero_is_refused_with_the_rule(site: Site) -> None:
    control = ControlServer(site.sims, "unused")
    for name, fault in [("pole-1", "no_reply"), ("manhole-1", "drop"), ("aq-1", "bad_crc")]:
        with pytest.raises(ControlError, match="count: Input should be greater than or equal to 1"):
            control.handle({"op": "fault", "sim": name, "fault": fault, "count": 0})
