"""Process settings: YAML + environment, every problem reported with its setting path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.settings import HubSettings
from cloud_hub.storage.settings import InfluxV1Settings
from edge_agent.settings import AgentSettings
from iot_runtime import ConfigError, load_settings

pytestmark = pytest.mark.unit

AGENT_YAML = """
agent_id: cabinet-017
mqtt: {host: 127.0.0.1, port: 1883}
devices:
  - device_id: pole-0001
    profile: smart_pole
    connection: {transport: modbus_tcp, host: 127.0.0.1, port: 5020, unit_id: 1}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_agent_config_loads(tmp_path: Path) -> None:
    settings = load_settings(AgentSettings, _write(tmp_path, AGENT_YAML))
    assert settings.devices[0].connection.port == 5020


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("port: 5020", "port: 70000"),
            "devices[0].connection.port: Input should be less than or equal to 65535 (got 70000)",
        ),
        (
            ("profile: smart_pole", "profile: toaster"),
            "devices[0].profile: no built-in profile 'toaster'",
        ),
        (("transport: modbus_tcp", "transport: zigbee"), "devices[0].connection"),
        (
            ("unit_id: 1}", "unit_id: 1, baud: 9600}"),
            "devices[0].connection.baud: Extra inputs are not permitted",
        ),
        (
            ("agent_id: cabinet-017", "agent_id: cabinet/017"),
            "agent_id: String should match pattern",
        ),
        (("mqtt: {", "mqtt: {colour: red, "), "mqtt.colour: Extra inputs are not permitted"),
    ],
)
def test_agent_config_errors_name_the_setting(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path, AGENT_YAML.replace(*change))
    with pytest.raises(ConfigError) as info:
        load_settings(AgentSettings, path)
    assert str(path) in str(info.value)
    assert message in "\n".join(info.value.issues)


def test_duplicate_device_ids_are_refused(tmp_path: Path) -> None:
    device = AGENT_YAML.split("devices:\n", 1)[1]
    with pytest.raises(ConfigError, match=r"devices\[1\].device_id 'pole-0001' is used twice"):
        load_settings(AgentSettings, _write(tmp_path, AGENT_YAML + device))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="line 4, column 2"):
        load_settings(AgentSettings, _write(tmp_path, "agent_id: a\nmqtt:\n  host: x\n port: 1\n"))


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_MQTT__PORT", "1999")
    monkeypatch.setenv("HUB_STORAGE__URL", "http://influx:8086")
    path = _write(
        tmp_path,
        "mqtt: {host: broker, port: 1883}\nstorage: {backend: influxdb1, url: http://x:8086}\n",
    )
    settings = load_settings(HubSettings, path)
    assert settings.mqtt.port == 1999 and settings.mqtt.host == "broker"
    assert isinstance(settings.storage, InfluxV1Settings)
    assert settings.storage.url == "http://influx:8086"


def test_bad_environment_value_is_reported_with_its_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUB_MQTT__PORT", "many")
    with pytest.raises(ConfigError) as info:
        load_settings(HubSettings)
    assert "mqtt.port: Input should be a valid integer" in "\n".join(info.value.issues)
    assert "HUB_" in str(info.value)


def test_hub_defaults_are_embedded() -> None:
    settings = HubSettings()
    assert settings.storage.backend == "sqlite"
    assert settings.registry_url.startswith("sqlite+aiosqlite")
