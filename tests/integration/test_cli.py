"""The command-line front doors, run as a newcomer runs them (subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.api.keys import hash_key
from cloud_hub.console.accounts import Accounts
from cloud_hub.registry import Registry
from device_profiles import load_builtin_profile
from firmware_sim import run_smart_pole
from tests.harness import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def _run(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_demo_shows_live_readings_of_the_simulated_pole(tmp_path: Path) -> None:
    result = _run(
        "iotctl",
        "demo",
        "--api-port",
        str(free_port()),
        "--duration",
        "12",
        "--data-dir",
        str(tmp_path / "demo"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.startswith("API") for line in lines)
    readings = [line for line in lines if "pole-0001" in line and "power=" in line]
    assert readings, result.stdout
    assert "demo finished" in result.stdout
    # the console's login, next to the API key: it signs in
    [login] = [line for line in lines if line.startswith("console")]
    password = re.search(r"sign in as admin / (\S+)\)", login)
    assert password, login
    url = f"sqlite+aiosqlite:///{tmp_path / 'demo' / 'registry.db'}"
    assert asyncio.run(_signs_in(url, "admin", password.group(1)))


async def _signs_in(registry_url: str, username: str, password: str) -> bool:
    registry = Registry(registry_url)
    await registry.start()
    try:
        signed = await Accounts(registry).sign_in(username, password, "127.0.0.1")
        return signed.user.username == username
    finally:
        await registry.close()


def test_create_user_stores_a_person_who_signs_in(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text("registry_url: sqlite+aiosqlite:///registry.db\n")
    created = subprocess.run(
        [str(BIN / "cloud-hub"), "create-user", "ops", "--role", "operator", "--site", "north",
         "--password-stdin", "--config", str(config)],
        input="correct horse battery\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "user 'ops' created (role operator, site north)" in created.stdout
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    assert asyncio.run(_signs_in(url, "ops", "correct horse battery"))
    weak = subprocess.run(
        [str(BIN / "cloud-hub"), "create-user", "eve", "--password-stdin", "--config", str(config)],
        input="short\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert weak.returncode == 1 and "at least 10 characters" in weak.stderr
    again = subprocess.run(
        [str(BIN / "cloud-hub"), "create-user", "ops", "--password-stdin", "--config", str(config)],
        input="correct horse battery\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "exists already" in again.stderr


def test_demo_script_with_its_api_port_taken_says_so_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            ["scripts/demo.sh", "--api-port", str(port), "--data-dir", str(tmp_path / "demo")],
            capture_output=True,
            text=True,
            timeout=300,  # the first run installs the package into .venv (pip, no download)
            env={**os.environ, "COLUMNS": "200"},
            cwd=Path(__file__).parents[2],
            check=False,
        )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: the API's port {port} is taken (already in use); choose another with "
        f"--api-port, e.g. --api-port {port + 1}"
    ]
    assert not (tmp_path / "demo").exists()  # stopped before starting anything


def test_demo_uses_real_servers_when_given(mosquitto: Any, influx_db: Any, tmp_path: Path) -> None:
    result = _run(
        "iotctl",
        "demo",
        "--api-port",
        str(free_port()),
        "--duration",
        "10",
        "--mqtt",
        mosquitto.url,
        "--influxdb",
        influx_db.url,
        "--data-dir",
        str(tmp_path / "demo"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(external)" in result.stdout
    assert any("power=" in line for line in result.stdout.splitlines()), result.stdout
    body = influx_db.server.query("iot_demo", "SELECT COUNT(power) FROM smart_pole")
    assert body["results"][0]["series"][0]["values"][0][1] > 0


async def test_edge_agent_check_probes_every_device(tmp_path: Path) -> None:
    async with run_smart_pole(seed=1, port=0, tick_s=None) as sim:
        config = tmp_path / "agent.yaml"
        config.write_text(
            "agent_id: cabinet-1\n"
            "devices:\n"
            "  - device_id: pole-1\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: 127.0.0.1, port: {sim.port}}}\n"
            "  - device_id: pole-2\n"
            "    profile: smart_pole\n"
            f"    connection: {{transport: modbus_tcp, host: 127.0.0.1, port: {free_port()}, timeout_s: 0.3}}\n"
            f"data_dir: {tmp_path / 'agent'}\n"
        )
        result = await asyncio.to_thread(_run, "edge-agent", "check", "--config", str(config))
        as_json = await asyncio.to_thread(
            _run, "edge-agent", "check", "--config", str(config), "--json"
        )
    assert result.returncode == 1  # pole-2 is unreachable
    assert "pole-1" in result.stdout and "ok" in result.stdout and "16 points" in result.stdout
    assert "pole-2" in result.stdout and "ConnectError" in result.stdout
    # every point, not the first six, each shown as its profile says
    profile = load_builtin_profile("smart_pole")
    assert all(re.search(rf"│ {name} +│", result.stdout) for name in profile.points), result.stdout
    assert re.search(r"│ voltage +│ \d+\.\d V +│", result.stdout), result.stdout
    assert re.search(r"│ lamp_on +│ (true|false) +│", result.stdout), result.stdout

    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    pole_1, pole_2 = document["devices"]
    assert pole_1["ok"] is True and list(pole_1["points"]) == list(profile.points)
    voltage = pole_1["points"]["voltage"]
    assert isinstance(voltage["value"], float) and voltage["unit"] == "V"
    assert voltage["text"] == f"{voltage['value']:.1f} V"  # the value as read beside its text
    assert pole_2["ok"] is False and pole_2["error"]["type"] == "ConnectError"


def test_bad_configuration_names_the_setting_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text("mqtt: {port: 70000}\nstorage: {backend: influxdb1}\n")
    result = _run("cloud-hub", "check-config", "--config", str(config))
    assert result.returncode == 2
    assert "mqtt.port: Input should be less than or equal to 65535" in result.stderr
    assert "storage.url: Field required" in result.stderr
    result = _run("cloud-hub", "check-config", env={"HUB_API__PORT": "x"})
    assert result.returncode == 2
    assert "api.port" in result.stderr


def test_profiles_validate_reports_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "schema_version: 1\nname: lamp\ntransport: modbus\npoints:\n"
        "  level: {type: uint16, modbus: {table: holding_register, address: 0}, writable: true, max: 100}\n"
        "commands:\n  dim: {writes: [{point: level, value: 150}]}\n"
    )
    result = _run("iotctl", "profiles", "validate", str(bad))
    assert result.returncode == 1
    assert "commands.dim.writes[0].value: 150 is above the maximum 100" in result.stderr
    ok = _run("iotctl", "profiles", "validate", "device_profiles/profiles/smart_pole.yaml")
    assert ok.returncode == 0, ok.stderr


async def _key_role(registry_url: str, secret: str) -> str | None:
    registry = Registry(registry_url)
    await registry.start()
    try:
        row = await registry.api_key_by_hash(hash_key(secret))
    finally:
        await registry.close()
    return None if row is None else row.role


def test_create_admin_key_from_another_directory_uses_the_configured_registry(
    tmp_path: Path,
) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    site.mkdir()
    elsewhere.mkdir()
    config = site / "hub.yaml"
    config.write_text("registry_url: sqlite+aiosqlite:///var/registry.db\n")
    registry_url = f"sqlite+aiosqlite:///{site}/var/registry.db"

    first = _run("cloud-hub", "create-admin-key", "--config", str(config), cwd=elsewhere)
    assert first.returncode == 0, first.stderr
    assert f"written to registry {registry_url} (a new registry" in first.stderr
    assert (site / "var/registry.db").exists()
    assert not (elsewhere / "var").exists()

    second = _run("cloud-hub", "create-admin-key", "--config", str(config), cwd=elsewhere)
    assert second.returncode == 0, second.stderr
    assert second.stderr.strip() == f"admin key 'admin' written to registry {registry_url}"
    for result in (first, second):
        assert asyncio.run(_key_role(registry_url, result.stdout.strip())) == "admin"
