"""Relative paths in a config file resolve against the file's folder, not the working
directory (one mechanism for the hub's and the agent's settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.settings import HubSettings, resolve_sqlite_url
from cloud_hub.storage.settings import SqliteStoreSettings
from edge_agent.settings import AgentSettings
from iot_runtime import ConfigError, load_settings

pytestmark = pytest.mark.unit

PROFILE = """
schema_version: 1
name: lamp
transport: modbus
points:
  level: {type: uint16, modbus: {table: holding_register, address: 0}}
"""


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory that is not the config file's folder."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_hub_paths_resolve_against_the_config_file(tmp_path: Path, elsewhere: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "hub.yaml").write_text(
        "registry_url: sqlite+aiosqlite:///var/registry.db\n"
        "storage: {backend: sqlite, path: data/telemetry.db}\n"
        "mqtt: {tls: {ca_file: certs/ca.pem}}\n"
    )
    settings = load_settings(HubSettings, conf / "hub.yaml")
    assert settings.registry_url == f"sqlite+aiosqlite:///{conf}/var/registry.db"
    assert isinstance(settings.storage, SqliteStoreSettings)
    assert settings.storage.path == conf / "data/telemetry.db"
    assert settings.mqtt.tls is not None and settings.mqtt.tls.ca_file == conf / "certs/ca.pem"
    assert settings.spool.path == conf / "var/spool-cloud-hub.db"


def test_hub_defaults_resolve_against_the_config_file(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "hub.yaml").write_text("api: {port: 8081}\n")
    settings = load_settings(HubSettings, tmp_path / "hub.yaml")
    assert settings.registry_url == f"sqlite+aiosqlite:///{tmp_path}/var/registry.db"
    assert isinstance(settings.storage, SqliteStoreSettings)
    assert settings.storage.path == tmp_path / "var/telemetry.db"


def test_environment_paths_resolve_against_the_config_file_too(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hub.yaml").write_text("{}\n")
    monkeypatch.setenv("HUB_SPOOL__PATH", "spool/hub.db")
    settings = load_settings(HubSettings, tmp_path / "hub.yaml")
    assert settings.spool.path == tmp_path / "spool/hub.db"


def test_without_a_file_relative_paths_stay_relative_to_the_working_directory(
    elsewhere: Path,
) -> None:
    settings = load_settings(HubSettings)
    assert settings.registry_url == "sqlite+aiosqlite:///var/registry.db"
    assert settings.spool.path == Path("var/spool-cloud-hub.db")
    assert SqliteStoreSettings().path == Path("var/telemetry.db")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////srv/hub/registry.db",
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://hub:secret@db.example/registry",
    ],
)
def test_absolute_memory_and_server_urls_are_unchanged(
    tmp_path: Path, elsewhere: Path, url: str
) -> None:
    (tmp_path / "hub.yaml").write_text(f"registry_url: {url!r}\n")
    assert load_settings(HubSettings, tmp_path / "hub.yaml").registry_url == url


def test_a_registry_url_that_is_no_url_names_the_setting(tmp_path: Path) -> None:
    (tmp_path / "hub.yaml").write_text("registry_url: not a url\n")
    with pytest.raises(ConfigError) as info:
        load_settings(HubSettings, tmp_path / "hub.yaml")
    assert any(issue.startswith("registry_url: ") for issue in info.value.issues)
    with pytest.raises(ValueError, match="not a database URL"):
        resolve_sqlite_url("::")


def test_agent_paths_resolve_against_the_config_file(tmp_path: Path, elsewhere: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "profiles/lamp.yaml").write_text(PROFILE)
    (conf / "agent.yaml").write_text(
        "agent_id: cabinet-1\n"
        "devices:\n"
        "  - device_id: lamp-1\n"
        "    profile: profiles/lamp.yaml\n"
        "    connection: {transport: modbus_tcp, host: 127.0.0.1, port: 502}\n"
        "  - device_id: pole-1\n"
        "    profile: smart_pole\n"
        "    connection: {transport: modbus_tcp, host: 127.0.0.1, port: 502}\n"
    )
    settings = load_settings(AgentSettings, conf / "agent.yaml")
    assert settings.data_dir == conf / "var/edge-agent"
    assert settings.devices[0].profile == str(conf / "profiles/lamp.yaml")
    assert settings.devices[1].profile == "smart_pole"


def test_agent_data_dir_in_the_file_resolves_against_it(tmp_path: Path, elsewhere: Path) -> None:
    (tmp_path / "agent.yaml").write_text("agent_id: cabinet-1\ndata_dir: state\n")
    assert load_settings(AgentSettings, tmp_path / "agent.yaml").data_dir == tmp_path / "state"
