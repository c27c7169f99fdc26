"""Helpers shared by integration tests: waiting on a condition, running the hub in-process,
announcing an agent to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiomqtt
import httpx

from cloud_hub.api_keys import create_api_key
from cloud_hub.registry import Registry
from cloud_hub.server import serve
from cloud_hub.settings import HubSettings
from device_profiles.wire import QOS, AgentState, Channel, DeviceInfo, encode, topic

T = TypeVar("T")


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
