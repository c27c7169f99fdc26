"""Helpers shared by integration tests: waiting on a condition, running the hub in-process,
announcing an agent to it."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiomqtt
import httpx

from cloud_hub.api.keys import create_api_key
from cloud_hub.registry import Registry
from cloud_hub.server import serve
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from device_profiles.wire import QOS, AgentState, Channel, DeviceInfo, encode, topic
from drivers import ModbusTcpSettings
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings, DeviceConfig
from firmware_sim import SmartPoleSim, run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port

T = TypeVar("T")


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 20.0) -> T:
    """Poll ``probe`` until it returns something other than None (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


@dataclass
class RunningHub:
    api: httpx.AsyncClient
    keys: dict[str, str]


async def make_keys(registry_url: str, *roles: str) -> dict[str, str]:
    registry = Registry(registry_url)
    await registry.start()
    try:
        return {role: (await create_api_key(registry, f"test {role}", role))[1] for role in roles}  # type: ignore[arg-type]
    finally:
        await registry.close()


@contextlib.asynccontextmanager
async def running_hub(
    settings: HubSettings, keys: dict[str, str] | None = None
) -> AsyncIterator[RunningHub]:
    """The hub (API + MQTT) in this event loop; an httpx client with an admin key."""
    keys = keys or await make_keys(settings.registry_url, "admin", "viewer")
    started = asyncio.Event()
    task = asyncio.create_task(serve(settings, started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        await task  # re-raises why the hub did not start
    base_url = f"http://{settings.api.host}:{settings.api.port}"
    headers = {"Authorization": f"Bearer {keys['admin']}"}
    try:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as api:
            yield RunningHub(api, keys)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def announce_agent(
    agent: aiomqtt.Client,
    api: httpx.AsyncClient,
    agent_id: str,
    device_id: str,
    profile: str = "smart_pole",
    *,
    retain: bool = True,
) -> None:
    """Publish an agent's birth message with one device; wait until the hub's API has it."""
    birth = AgentState(
        agent_id=agent_id,
        state="online",
        devices=[DeviceInfo(device_id=device_id, profile=profile)],
    )
    await agent.publish(topic(agent_id, Channel.STATE), encode(birth), qos=QOS, retain=retain)

    async def registered() -> bool | None:
        response = await api.get(f"/api/v1/devices/{device_id}")
        return True if response.status_code == 200 else None

    await eventually(registered)


def hub_settings(broker: Any, tmp_path: Path, unique_id: str, **overrides: Any) -> HubSettings:
    """A hub on ``broker`` with its registry and an embedded telemetry store in ``tmp_path``,
    its API on a free port."""
    values: dict[str, Any] = {
        "mqtt": MqttSettings(host=broker.host, port=broker.port),
        "client_id": f"hub-{unique_id}",
        "storage": SqliteStoreSettings(path=tmp_path / "telemetry.db"),
        "registry_url": f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}",
        "api": ApiSettings(port=free_port()),
    }
    return HubSettings(**(values | overrides))


@dataclass
class Poles:
    sims: list[SmartPoleSim]
    #: the edge agent polling them (cancel it to take the agent away)
    agent: asyncio.Task[None]

    async def stop_agent(self) -> None:
        self.agent.cancel()
        await asyncio.gather(self.agent, return_exceptions=True)


def pole_agent_settings(
    agent_id: str,
    mqtt: MqttSettings,
    sims: Mapping[str, SmartPoleSim],
    data_dir: Path,
    poll_interval_s: float = 0.5,
    **settings: Any,
) -> AgentSettings:
    """An agent's settings for simulated smart poles (device id -> simulator, Modbus TCP)."""
    return AgentSettings(
        agent_id=agent_id,
        mqtt=mqtt,
        devices=[
            DeviceConfig(
                device_id=device_id,
                profile="smart_pole",
                connection=ModbusTcpSettings(host=sim.host, port=sim.port),
                poll_interval_s=poll_interval_s,
            )
            for device_id, sim in sims.items()
        ],
        data_dir=data_dir,
        **settings,
    )


@contextlib.asynccontextmanager
async def poles_behind_an_agent(
    mqtt: MqttSettings, data_dir: Path, agent_id: str, device_ids: list[str]
) -> AsyncIterator[Poles]:
    """Simulated smart poles (Modbus TCP, values still) polled every 0.5 s by a real edge
    agent, until the block exits."""
    async with contextlib.AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(run_smart_pole(seed=i, port=0, tick_s=None))
            for i in range(len(device_ids))
        ]
        settings = pole_agent_settings(
            agent_id, mqtt, dict(zip(device_ids, sims, strict=True)), data_dir
        )
        poles = Poles(sims, asyncio.create_task(Agent(settings).run()))
        try:
            yield poles
        finally:
            await poles.stop_agent()


async def fast_poles(stack: contextlib.AsyncExitStack, count: int) -> list[SmartPoleSim]:
    """``count`` simulated smart poles whose values change every 0.1 s, open until ``stack``
    closes."""
    return [
        await stack.enter_async_context(run_smart_pole(seed=i, port=0, tick_s=0.1))
        for i in range(count)
    ]


def fast_pole_agent(
    agent_id: str,
    mqtt: MqttSettings,
    sims: list[SmartPoleSim],
    device_ids: list[str],
    data_dir: Path,
) -> Agent:
    """An edge agent (not started) polling ``sims`` at 10 Hz and sending every reading they
    serve (no report-on-change), in batches of at most 0.1 s."""
    return Agent(
        AgentSettings(
            agent_id=agent_id,
            mqtt=mqtt,
            devices=[
                DeviceConfig(
                    device_id=device_id,
                    profile="smart_pole",
                    connection=ModbusTcpSettings(host=sim.host, port=sim.port, timeout_s=0.5),
                    poll_interval_s=0.1,
                    report_on_change=False,
                )
                for device_id, sim in zip(device_ids, sims, strict=True)
            ],
            batch_max_delay_s=0.1,
            data_dir=data_dir,
        )
    )


async def devices_registered(api: httpx.AsyncClient, device_ids: list[str]) -> None:
    """Wait until the hub lists every one of ``device_ids``."""

    async def listed() -> bool | None:
        devices = (await api.get("/api/v1/devices")).json()
        return True if {d["device_id"] for d in devices} >= set(device_ids) else None

    await eventually(listed)
