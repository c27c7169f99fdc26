"""A Mosquitto 2 broker with the dynamic-security plugin: anonymous clients refused, an admin
user for the plugin, and the hub's own user (``iot/v1/#`` only)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.provisioning import MosquittoDynsec
from cloud_hub.provisioning.broker import hub_acls
from iot_runtime.mqtt import MqttSettings
from tests.harness.mosquitto import MosquittoServer

__all__ = ["DYNSEC_PLUGIN", "Broker", "start_dynsec_broker"]

DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


@dataclass
class Broker:
    server: MosquittoServer
    admin: MqttSettings  # the dynamic-security admin (may subscribe to '#', publish nothing)
    hub: MqttSettings  # the hub's own user: iot/v1/# only


async def start_dynsec_broker(
    factory: Callable[..., MosquittoServer], tmp_path: Path, timeout: float = 10.0
) -> Broker:
    config = tmp_path / "dynsec.json"
    admin_password = secrets.token_urlsafe(16)
    init = await asyncio.create_subprocess_exec(
        "mosquitto_ctrl", "dynsec", "init", str(config), "admin", admin_password,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(init.communicate(), timeout)
    if init.returncode != 0:
        raise RuntimeError(f"mosquitto_ctrl dynsec init failed: {output.decode()}")
    server = factory(
        extra_config=f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {config}\n",
        allow_anonymous=False,
    )
    admin = MqttSettings(
        host=server.host, port=server.port, username="admin", password=admin_password
    )
    hub_password = secrets.token_urlsafe(16)
    await MosquittoDynsec(admin).create_user("cloud-hub", hub_password, hub_acls())
    hub = MqttSettings(
        host=server.host, port=server.port, username="cloud-hub", password=hub_password
    )
    return Broker(server, admin, hub)
