"""The broker's Last Will of an agent that vanishes says only what is true: offline, and
nothing about its software or its devices (which the will, composed at connect, cannot know)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_profiles.wire import Channel, topic
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from iot_runtime.mqtt import MqttSettings
from tests.harness.blackhole import BlackholeProxy

pytestmark = pytest.mark.integration


async def _next_state(messages: Any, state: str) -> dict[str, Any]:
    async for message in messages:
        document: dict[str, Any] = json.loads(bytes(message.payload))
        if document.get("state") == state:
            return document
    raise AssertionError("subscription ended")


async def test_the_last_will_states_only_that_the_agent_is_offline(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    agent_id = f"agent-{unique_id}"
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as watcher:
        await watcher.subscribe(topic(agent_id, Channel.STATE), qos=1)
        async with BlackholeProxy(mosquitto.host, mosquitto.port) as proxy:
            agent = Agent(
                AgentSettings(
                    agent_id=agent_id,
                    mqtt=MqttSettings(host="127.0.0.1", port=proxy.port),
                    data_dir=tmp_path / "agent",
                )
            )
            task = asyncio.create_task(agent.run())
            birth = await asyncio.wait_for(_next_state(watcher.messages, "online"), 15)
        # the proxy closed the agent's connection without a DISCONNECT: the broker sends the will
        try:
            will = await asyncio.wait_for(_next_state(watcher.messages, "offline"), 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert birth["devices"] == [] and birth["software_version"]  # the birth states both
    assert will == {"v": 1, "agent_id": agent_id, "state": "offline"}
