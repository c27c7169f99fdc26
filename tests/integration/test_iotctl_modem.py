"""``iotctl modem check`` as a technician runs it (subprocesses) against the simulated BC95 on
its real pty: registered (with a CoAP round trip through the modem's UDP socket to a real CoAP
server on loopback, and to the hub's own CoAP ingress), searching, denied, no SIM, low signal,
unplugged, a modem answering garbage, a hub that does not answer; ``--json`` gives the same
facts. Then the NB-IoT agent's health carries the same modem figures to the hub, which returns
them at ``GET /api/v1/agents/{id}``.

docs/field-guide/nbiot-sensor.md is this walk-through, command for command.
"""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap import resource
from aiocoap.messagemanager import MessageManager

from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from drivers import ModbusTcpSettings
from drivers.nbiot import NbIotModemSettings
from edge_agent.agent import Agent
from edge_agent.nbiot.settings import NbIotUplinkSettings
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from firmware_sim.nbiot_modem import FaultRule, NbIotModemSim, run_nbiot_modem
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import eventually, running_hub

pytestmark = pytest.mark.integration

IOTCTL = str(Path(sys.executable).with_name("iotctl"))
IMEI, ICCID = "866123045678901", "89860425102180012345"


async def iotctl(*args: str, lang: str = "en") -> tuple[int, str, str]:
    env = {**os.environ, "COLUMNS": "160", "IOTCTL_LANG": lang}
    env.pop("IOTCTL_HUB_COAP", None)
    process = await asyncio.create_subprocess_exec(
        IOTCTL, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    assert "Traceback" not in err.decode(), err.decode()
    return process.returncode, out.decode(), err.decode()


async def check_json(port: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = await iotctl("modem", "check", port, "--json", *args)
    document: dict[str, Any] = json.loads(out)
    return code, document


@contextlib.asynccontextmanager
async def coap_server() -> AsyncIterator[int]:
    """A CoAP server on loopback (it answers a CoAP ping with RST); its port."""
    context = await aiocoap.Context.create_server_context(
        resource.Site(), bind=("127.0.0.1", 0), transports=["udp6"]
    )
    try:
        for interface in context.request_interfaces:
            manager = getattr(interface, "token_interface", None)
            if isinstance(manager, MessageManager):
                sock = manager.message_interface.transport.get_extra_info("socket")
                yield int(sock.getsockname()[1])
                break
    finally:
        await context.shutdown()


Scenario = Callable[[NbIotModemSim], Awaitable[None]]


async def test_modem_check_gives_each_verdict_and_exit_code(tmp_path: Path) -> None:
    async with coap_server() as coap_port:
        hub = f"coap://127.0.0.1:{coap_port}"

        async def registered(sim: NbIotModemSim) -> None:
            code, out, _ = await iotctl("modem", "check", sim.port_path, "--hub", hub)
            assert code == 0, out
            assert "ok: registered, -65 dBm (excellent), hub reached in" in out
            for fact in (IMEI, ICCID, "BC95HBR01A01", "registered, home network (CEREG 1)"):
                assert fact in out
            assert "on: periodic TAU 6 h, active time 1 min (granted by the network)" in out
            assert f"127.0.0.1:{coap_port} in" in out and "answered by RST" in out
            ping = sim.sent_datagrams[-1]
            assert (ping.port, ping.data[:2]) == (coap_port, b"\x40\x00")  # empty CON
            assert sim.commands[-1] == "AT+NSOCL=0"  # the socket is closed again

            code, facts = await check_json(sim.port_path, "--hub", hub)
            assert code == 0 and facts["level"] == "ok" and facts["verdict"]["code"] == "ok"
            modem = facts["modem"]
            assert (modem["imei"], modem["iccid"], modem["firmware"]) == (
                IMEI,
                ICCID,
                "BC95HBR01A01",
            )
            assert (modem["csq"], modem["rssi_dbm"], modem["quality"]) == (24, -65, "excellent")
            assert (modem["registration"], modem["stat"], modem["attached"]) == (
                "registered_home",
                1,
                True,
            )
            assert modem["bands"] == [8] and modem["radio"]["rsrp_dbm"] == -87.3
            assert modem["psm"] == {
                "enabled": True,
                "periodic_tau_s": 21600,
                "active_time_s": 60,
                "source": "network",
            }
            trip = facts["round_trip"]
            assert trip["reached"] and trip["answer"] == "RST" and trip["latency_ms"] > 0

            code, out, _ = await iotctl(
                "--lang", "zh", "modem", "check", sim.port_path, "--hub", hub
            )
            assert (
                code == 0 and "正常：已注册，-65 dBm（极好）" in out and "周期性 TAU 6 小时" in out
            )

        async def searching(sim: NbIotModemSim) -> None:
            sim.set_registration(2)
            code, out, _ = await iotctl("modem", "check", sim.port_path, "--hub", hub)
            assert code == 1
            assert "not registered (still searching): no coverage or SIM not activated" in out
            sim.set_registration(3)
            code, out, _ = await iotctl("modem", "check", sim.port_path)
            assert code == 1 and "registration denied: the network refuses this SIM" in out
            assert ICCID in out

        async def no_sim(sim: NbIotModemSim) -> None:
            sim.remove_sim()
            code, out, _ = await iotctl("modem", "check", sim.port_path)
            assert code == 1 and "no SIM card: insert or reseat the SIM" in out
            code, facts = await check_json(sim.port_path)
            assert code == 1 and facts["verdict"]["code"] == "no_sim"
            assert facts["modem"]["sim"] == "missing" and facts["modem"]["sim_error"] == 10
            assert facts["modem"]["iccid"] is None and facts["modem"]["imei"] == IMEI

        async def low_signal(sim: NbIotModemSim) -> None:
            sim.set_signal(3)
            code, out, _ = await iotctl("modem", "check", sim.port_path, "--hub", hub)
            assert code == 1
            assert "signal too weak (-107 dBm): move the antenna or the device" in out
            code, facts = await check_json(sim.port_path, "--hub", hub)
            assert code == 1 and facts["verdict"]["code"] == "weak_signal"
            assert (facts["modem"]["rssi_dbm"], facts["modem"]["quality"]) == (-107, "poor")

        async def unplugged(sim: NbIotModemSim) -> None:
            sim.unplug()
            code, out, _ = await iotctl("modem", "check", sim.port_path, "--hub", hub)
            assert code == 1
            assert out.startswith("modem not answering: unplugged, wrong port or wrong baud rate")
            assert len(out.strip().splitlines()) == 1
            code, facts = await check_json(sim.port_path)
            assert code == 1 and facts["verdict"]["code"] == "modem_not_answering"
            assert facts["modem"] is None

        async def garbage(sim: NbIotModemSim) -> None:
            sim.faults.add(FaultRule("AT+CSQ", reply=[b"+CSQ:strong,99", b"OK"], count=-1))
            code, facts = await check_json(sim.port_path)
            assert code == 1 and facts["verdict"]["code"] == "modem_garbled"
            assert facts["verdict"]["message"].startswith("modem answers garbage")

        async def hub_silent(sim: NbIotModemSim) -> None:
            silent = f"127.0.0.1:{free_port()}"
            code, facts = await check_json(sim.port_path, "--host", silent, "--timeout", "0.7")
            assert code == 1 and facts["verdict"]["code"] == "hub_unreachable"
            assert facts["round_trip"]["attempts"] == 3 and not facts["round_trip"]["reached"]

        async def bad_option(sim: NbIotModemSim) -> None:
            code, _, err = await iotctl("modem", "check", sim.port_path, "--hub", "http://hub")
            assert code == 2 and "is not coap://host:port" in err

        scenarios: list[Scenario] = [
            registered,
            searching,
            no_sim,
            low_signal,
            unplugged,
            garbage,
            hub_silent,
            bad_option,
        ]

        async def run(scenario: Scenario) -> None:
            link_dir = tmp_path / scenario.__name__
            link_dir.mkdir()
            async with run_nbiot_modem(link_dir=str(link_dir)) as sim:
                await scenario(sim)

        await asyncio.gather(*(run(s) for s in scenarios))


async def test_the_agent_reports_its_modem_figures_to_the_hub(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    """Check the modem against the hub's own CoAP ingress, then start the agent: its health at
    the hub carries the figures the check showed."""
    agent_id, device_id = f"nb-{unique_id}", f"pole-{unique_id}"
    coap_port = free_port()
    hub_settings = HubSettings(
        mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port),
        client_id=f"hub-{unique_id}",
        storage=SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        registry_url=f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        api=ApiSettings(port=free_port()),
        coap=CoapIngressSettings(enabled=True, host="127.0.0.1", port=coap_port),
    )
    async with contextlib.AsyncExitStack() as stack:
        hub = await stack.enter_async_context(running_hub(hub_settings))
        created = await hub.api.post(f"/api/v1/agents/{agent_id}/coap-secret")
        assert created.status_code == 201, created.text
        modem = await stack.enter_async_context(run_nbiot_modem(link_dir=str(tmp_path)))
        modem.set_signal(21)  # -71 dBm

        code, out, _ = await iotctl(
            "modem", "check", modem.port_path, "--hub", f"coap://127.0.0.1:{coap_port}"
        )
        assert code == 0, out
        assert "ok: registered, -71 dBm (good), hub reached in" in out

        pole = await stack.enter_async_context(run_smart_pole(seed=1, port=0, tick_s=None))
        agent = Agent(
            AgentSettings(
                agent_id=agent_id,
                devices=[
                    DeviceConfig(
                        device_id=device_id,
                        profile="smart_pole",
                        connection=ModbusTcpSettings(host=pole.host, port=pole.port),
                        poll_interval_s=1.0,
                    )
                ],
                nbiot=NbIotUplinkSettings(
                    modem=NbIotModemSettings(port=modem.port_path),
                    hub_host="127.0.0.1",
                    hub_port=coap_port,
                    secret=created.json()["secret"],
                    uplink_interval_s=0.3,
                ),
                health_interval_s=0.3,
                data_dir=tmp_path / "agent",
            )
        )
        task = asyncio.create_task(agent.run())
        try:

            async def modem_at_hub() -> dict[str, Any] | None:
                response = await hub.api.get(f"/api/v1/agents/{agent_id}")
                if response.status_code != 200:
                    return None
                health = response.json()["health"]
                return health["modem"] if health and health.get("modem") else None

            figures = await eventually(modem_at_hub, timeout=20)
            assert (figures["imei"], figures["iccid"], figures["firmware"]) == (
                IMEI,
                ICCID,
                "BC95HBR01A01",
            )
            assert (figures["csq"], figures["rssi_dbm"], figures["quality"]) == (21, -71, "good")
            assert (figures["registration"], figures["attached"]) == ("registered_home", True)
            assert figures["bands"] == [8] and figures["verdict"] == "ok"
            assert figures["psm"] == {
                "enabled": True,
                "periodic_tau_s": 21600,
                "active_time_s": 60,
                "source": "network",
            }
            assert figures["checked_at"] > 0
            assert modem.cereg_urc_mode == 1  # the check put the URC mode back
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
