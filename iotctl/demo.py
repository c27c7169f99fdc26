"""The demo: a simulated smart pole, an edge agent and the hub in one process.

With no options it needs no server at all: an in-process MQTT broker (amqtt) and the embedded
SQLite telemetry store. Given a broker URL and/or an InfluxDB URL it uses those instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.markup import escape

from cloud_hub.api.keys import create_api_key
from cloud_hub.console.accounts import Accounts, UserExists
from cloud_hub.registry import Registry
from cloud_hub.server import serve
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import InfluxV1Settings, SqliteStoreSettings
from device_profiles import load_builtin_profile
from device_profiles.display import show_values
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings
from iotctl.embedded_broker import embedded_broker
from iotctl.port_check import ensure_port_free

__all__ = ["DemoOptions", "run_demo"]

AGENT_ID = "demo-cabinet-01"
DEVICE_ID = "pole-0001"
SHOWN = ("lamp_on", "dimming", "power", "energy", "voltage", "illuminance", "temperature", "pm25")


@dataclass(frozen=True)
class DemoOptions:
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    mqtt_url: str | None = None
    influxdb_url: str | None = None
    data_dir: Path = Path("var/demo")
    seed: int = 1
    poll_interval_s: float = 1.0
    print_every_s: float = 2.0
    duration_s: float | None = None


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _mqtt_settings(url: str) -> MqttSettings:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"broker URL {url!r}: use mqtt://host:port")
    return MqttSettings(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 1883,
        username=parts.username,
        password=parts.password,
    )


async def run_demo(options: DemoOptions, console: Console) -> None:
    """Run until cancelled (or ``duration_s``); PortTaken, before anything starts, if the
    API's port is in use."""
    ensure_port_free(options.api_host, options.api_port)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        if options.mqtt_url:
            mqtt = _mqtt_settings(options.mqtt_url)
            broker_text = f"mqtt://{mqtt.host}:{mqtt.port} (external)"
        else:
            port = _free_port("127.0.0.1")
            await stack.enter_async_context(embedded_broker("127.0.0.1", port))
            mqtt = MqttSettings(host="127.0.0.1", port=port, protocol="3.1.1")
            broker_text = f"mqtt://127.0.0.1:{port} (embedded amqtt)"
        sim = await stack.enter_async_context(run_smart_pole(seed=options.seed, port=0))
        storage: InfluxV1Settings | SqliteStoreSettings
        if options.influxdb_url:
            storage = InfluxV1Settings(url=options.influxdb_url, database="iot_demo")
            storage_text = f"InfluxDB {options.influxdb_url} database iot_demo"
        else:
            storage = SqliteStoreSettings(path=options.data_dir / "telemetry.db")
            storage_text = f"embedded SQLite {storage.path}"
        hub_settings = HubSettings(
            mqtt=mqtt,
            client_id="demo-hub",
            storage=storage,
            registry_url=f"sqlite+aiosqlite:///{options.data_dir / 'registry.db'}",
            api=ApiSettings(host=options.api_host, port=options.api_port),
        )
        agent_settings = AgentSettings(
            agent_id=AGENT_ID,
            mqtt=mqtt,
            devices=[
                DeviceConfig(
                    device_id=DEVICE_ID,
                    profile="smart_pole",
                    connection=ModbusTcpSettings(host=sim.host, port=sim.port, unit_id=sim.unit_id),
                    poll_interval_s=options.poll_interval_s,
                )
            ],
            data_dir=options.data_dir / "agent",
        )
        api = f"http://{options.api_host}:{options.api_port}"
        api_key, password = await _credentials(hub_settings.registry_url)
        async with asyncio.TaskGroup() as group:
            started = asyncio.Event()
            group.create_task(serve(hub_settings, started), name="hub")
            await started.wait()
            group.create_task(Agent(agent_settings).run(), name="agent")
            console.print(f"[bold]console[/]        {api}/  (sign in as admin / {password})")
            console.print(f"[bold]API[/]            {api}  (OpenAPI docs: {api}/docs)")
            console.print(
                f"[bold]API key[/]        {api_key}  (admin; send as 'Authorization: Bearer ...')"
            )
            console.print(f"[bold]broker[/]         {broker_text}")
            console.print(f"[bold]telemetry[/]      {storage_text}")
            console.print(
                f"[bold]simulated pole[/] modbus-tcp://{sim.host}:{sim.port} unit {sim.unit_id}"
            )
            console.print(
                f"try: curl -X POST {api}/api/v1/devices/{DEVICE_ID}/commands "
                f"-H 'Authorization: Bearer {api_key}' -H 'content-type: application/json' "
                """-d '{"name": "set_dimming", "params": {"level": 40}}'"""
            )
            console.print("live readings (Ctrl-C to stop):")
            printer = group.create_task(
                _print_readings(api, api_key, options, console), name="printer"
            )
            if options.duration_s is not None:
                await asyncio.sleep(options.duration_s)
                raise _DemoOver
            await printer


class _DemoOver(Exception):
    pass


async def _credentials(registry_url: str) -> tuple[str, str]:
    """A new admin API key, and the console's ``admin`` with a new password (each run)."""
    registry = Registry(registry_url)
    await registry.start()
    try:
        _, api_key = await create_api_key(registry, "demo", "admin")
        password = secrets.token_urlsafe(12)
        accounts = Accounts(registry)
        try:
            await accounts.create_user("demo", "admin", password, "admin")
        except UserExists:
            await accounts.reset_password("demo", "admin", password)
    finally:
        await registry.close()
    return api_key, password


async def _print_readings(api: str, api_key: str, options: DemoOptions, console: Console) -> None:
    url = f"{api}/api/v1/devices/{DEVICE_ID}/telemetry/latest"
    profile = load_builtin_profile("smart_pole")
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(timeout=5, headers=headers) as http:
        while True:
            await asyncio.sleep(options.print_every_s)
            response = await http.get(url)
            if response.status_code != 200:
                console.print(f"[dim]waiting for the first readings ({response.status_code})[/]")
                continue
            points = response.json()["points"]
            if not points:
                continue
            newest = max(p["ts"] for p in points.values())
            values = {name: points[name]["value"] for name in SHOWN if name in points}
            shown = "  ".join(f"{s.name}={s.text}" for s in show_values(profile, values))
            console.print(f"{newest[11:19]}Z {DEVICE_ID}  {escape(shown)}")


def run_demo_until_done(options: DemoOptions, console: Console) -> None:
    """Run the demo until Ctrl-C or ``duration_s``."""
    try:
        asyncio.run(run_demo(options, console))
    except* _DemoOver:
        console.print("demo finished")
