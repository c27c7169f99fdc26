"""``edge-agent provision``: exchange a provisioning token for the agent's broker credentials.

The agent sends its id and its devices (from its config file) to the hub's
``POST /api/v1/provisioning/claim`` with the token, receives its own MQTT username and
password (valid only in its namespace ``iot/v1/<agent_id>/#`` and only with its client id),
and writes them into the ``mqtt`` section of its config file, rewritten atomically with mode
0600 (comments in the file are not kept). ``edge-agent run`` then uses them.

Errors: :class:`ProvisionError` (``status`` and ``reason`` as the hub gave them, or status 0
and reason ``unreachable`` when the hub could not be reached).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from device_profiles import ProfileError, resolve_profile
from device_profiles.yaml_io import load_yaml_mapping
from edge_agent.settings import AgentSettings
from iot_runtime import ConfigError, load_settings

__all__ = [
    "CLAIM_PATH",
    "ProvisionError",
    "ProvisionedCredentials",
    "claim",
    "devices_from_settings",
    "provision",
    "write_credentials",
]

CLAIM_PATH = "/api/v1/provisioning/claim"
TOKEN_ENV = "EDGE_AGENT_PROVISION_TOKEN"  # noqa: S105 - the variable name, not a secret


class ProvisionError(Exception):
    """The hub refused the claim (``status``, ``reason``) or could not be reached."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{detail} ({reason}, HTTP {status})" if status else detail)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ProvisionedCredentials:
    agent_id: str
    host: str
    port: int
    tls: bool
    username: str
    password: str = field(repr=False)
    client_id: str
    site: str | None
    devices: list[str]


async def claim(
    hub_url: str,
    token: str,
    agent_id: str,
    devices: Sequence[Mapping[str, Any]],
    *,
    timeout_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProvisionedCredentials:
    """Claim ``agent_id`` at the hub with ``token``; ``devices`` as the hub's claim expects
    (``device_id``, ``profile`` and optionally ``site``, ``pole``, ``lat``, ...)."""
    body = {"agent_id": agent_id, "devices": list(devices)}
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(
            base_url=hub_url, timeout=timeout_s, transport=transport
        ) as client:
            response = await client.post(CLAIM_PATH, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ProvisionError(0, "unreachable", f"cannot reach the hub at {hub_url}: {exc}") from exc
    if response.status_code != 201:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        raise ProvisionError(
            response.status_code,
            str(problem.get("reason", "error")),
            str(problem.get("detail", response.text[:200])),
        )
    data = response.json()
    mqtt = data["mqtt"]
    return ProvisionedCredentials(
        agent_id=data["agent_id"],
        host=mqtt["host"],
        port=int(mqtt["port"]),
        tls=bool(mqtt["tls"]),
        username=mqtt["username"],
        password=mqtt["password"],
        client_id=mqtt["client_id"],
        site=data.get("site"),
        devices=list(data["devices"]),
    )


def devices_from_settings(settings: AgentSettings, site: str | None = None) -> list[dict[str, Any]]:
    """The claim's device list from the agent's configured devices (profile by its name)."""
    devices = []
    for device in settings.devices:
        entry: dict[str, Any] = {
            "device_id": device.device_id,
            "profile": resolve_profile(device.profile).name,
        }
        if site is not None:
            entry["site"] = site
        devices.append(entry)
    return devices


def write_credentials(config_path: Path, credentials: ProvisionedCredentials) -> None:
    """Put the broker address and credentials into the config file's ``mqtt`` section.

    The file is replaced atomically (temporary file in the same folder, fsync, rename) and
    ends up readable by its owner only (0600): it now holds a secret.
    """
    data = load_yaml_mapping(config_path) if config_path.exists() else {}
    mqtt: dict[str, Any] = dict(data.get("mqtt") or {})
    mqtt.update(
        host=credentials.host,
        port=credentials.port,
        username=credentials.username,
        password=credentials.password,
    )
    if credentials.tls:
        mqtt.setdefault("tls", {})  # system CAs unless the file names a CA bundle already
    else:
        mqtt.pop("tls", None)
    data["mqtt"] = mqtt
    data.setdefault("agent_id", credentials.agent_id)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    folder = config_path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{config_path.name}.", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, config_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.chmod(config_path, 0o600)


def provision(
    hub: Annotated[str, typer.Option("--hub", help="The hub's base URL, e.g. https://hub:8080")],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"The provisioning token (or set {TOKEN_ENV}, keeping it out of shell history).",
        ),
    ],
    config: Annotated[
        Path, typer.Option("--config", "-c", help="The agent YAML file; credentials go into it.")
    ],
    site: Annotated[
        str | None, typer.Option("--site", help="Site of the devices (default: the token's).")
    ] = None,
) -> None:
    """Claim this agent at the hub and store its broker credentials in the config file."""
    try:
        settings = load_settings(AgentSettings, config)
        devices = devices_from_settings(settings, site)
    except (ConfigError, ProfileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        credentials = asyncio.run(claim(hub, token, settings.agent_id, devices))
    except ProvisionError as exc:
        typer.echo(f"error: provisioning refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    write_credentials(config, credentials)
    typer.echo(
        f"agent {credentials.agent_id} provisioned: broker {credentials.host}:{credentials.port} "
        f"as {credentials.username}, {len(credentials.devices)} device(s); "
        f"credentials written to {config} (mode 0600)"
    )
