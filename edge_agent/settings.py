"""The agent's configuration: one YAML file (and ``AGENT_*`` environment variables)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from device_profiles import ProfileError, resolve_profile
from device_profiles.loader import is_profile_path
from device_profiles.wire import ID_PATTERN
from drivers import ConnectionSettings
from edge_agent.nbiot.settings import NbIotUplinkSettings
from iot_runtime import ConfigPath, FileAndEnvSettings, resolve_config_path
from iot_runtime.logging import LogFormat
from iot_runtime.mqtt import MqttSettings

__all__ = ["AgentSettings", "DeviceConfig", "check_unique_device_ids"]

WireId = Annotated[str, Field(pattern=ID_PATTERN)]


class DeviceConfig(BaseModel):
    """One field device behind the agent."""

    model_config = ConfigDict(extra="forbid")

    device_id: WireId
    profile: str = Field(
        description="A built-in profile name or a path to a profile YAML file (a relative "
        "path is relative to the config file's folder)."
    )
    connection: ConnectionSettings
    poll_interval_s: float | None = Field(
        default=None, gt=0, le=86400, description="Overrides the profile's poll intervals."
    )
    report_on_change: bool = Field(
        default=True,
        description="Report a point only when it changed beyond its deadband (or went silent "
        "for max_silent_s); false reports every poll.",
    )
    max_silent_s: float = Field(
        default=60.0, gt=0, le=86400, description="Report a point at least this often."
    )
    commands_per_minute: int = Field(
        default=30,
        ge=1,
        le=6000,
        description="Commands this device executes per minute at most; more are rejected.",
    )

    @field_validator("profile")
    @classmethod
    def _profile_loads(cls, ref: str) -> str:
        if is_profile_path(ref):
            ref = str(resolve_config_path(Path(ref)))
        try:
            resolve_profile(ref)
        except ProfileError as exc:
            raise ValueError("; ".join(exc.issues)) from exc
        return ref


class BufferSettings(BaseModel):
    """The on-disk store-and-forward buffer (``data_dir/outbox.sqlite3``).

    Durability: readings are committed every ``flush_interval_s`` (or ``flush_max_readings``),
    so a killed agent loses at most that much; ``synchronous: FULL`` extends the same bound to
    power loss, at some cost in write speed.
    """

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=256 * 1024,
        description="Disk cap; oldest telemetry goes first.",
    )
    flush_interval_s: float = Field(default=0.2, gt=0, le=60)
    flush_max_readings: int = Field(default=1000, ge=1)
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


class DeliverySettings(BaseModel):
    """When a telemetry batch may leave the spool (MQTT uplink; NB-IoT is always confirmed by
    the hub's CoAP response).

    ``confirm: stored`` (default) keeps every batch until the hub acknowledges that it stored
    it (on the agent's ``acks`` channel), sending what is unconfirmed again after a reconnect
    or ``ack_timeout_s`` (doubling up to ``ack_timeout_max_s`` while no acknowledgement comes),
    with at most ``window_batches`` batches waiting. ``confirm: broker`` forgets a batch on the
    broker's PUBACK, as hubs before stored acknowledgements need: a broker that crashes before
    writing its queue to disk then loses what it acknowledged.
    """

    model_config = ConfigDict(extra="forbid")

    confirm: Literal["stored", "broker"] = "stored"
    window_batches: int = Field(default=16, ge=1, le=1000)
    ack_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    ack_timeout_max_s: float = Field(default=300.0, gt=0, le=86400)

    @model_validator(mode="after")
    def _timeouts(self) -> DeliverySettings:
        if self.ack_timeout_max_s < self.ack_timeout_s:
            raise ValueError("ack_timeout_max_s must be at least ack_timeout_s")
        return self


def check_unique_device_ids(devices: Sequence[DeviceConfig]) -> None:
    """ValueError naming the first device whose ``device_id`` an earlier one already has."""
    seen: set[str] = set()
    for index, device in enumerate(devices):
        if device.device_id in seen:
            raise ValueError(f"devices[{index}].device_id {device.device_id!r} is used twice")
        seen.add(device.device_id)


class AgentSettings(FileAndEnvSettings):
    """Settings of one edge agent."""

    model_config = SettingsConfigDict(
        env_prefix="AGENT_", env_nested_delimiter="__", extra="forbid"
    )

    agent_id: WireId
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    devices: list[DeviceConfig] = Field(default_factory=list)
    batch_max_readings: int = Field(
        default=500, ge=1, le=10_000, description="Readings per telemetry message at most."
    )
    batch_max_delay_s: float = Field(
        default=0.2, ge=0, le=60, description="How long a reading may wait for others to batch."
    )
    buffer: BufferSettings = Field(default_factory=BufferSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    nbiot: NbIotUplinkSettings | None = Field(
        default=None,
        description="Send through an NB-IoT modem to the hub's CoAP ingress instead of MQTT "
        "(a stand-alone sensor that sleeps between uplinks).",
    )
    health_interval_s: float = Field(
        default=60.0, gt=0, le=86400, description="How often the agent reports its health."
    )
    data_dir: ConfigPath = Field(
        default=Path("var/edge-agent"),
        validate_default=True,
        description="The agent's buffer, journal and applied configuration; a relative path is "
        "relative to the config file's folder.",
    )
    log_level: str = "INFO"
    log_format: LogFormat = "auto"

    @model_validator(mode="after")
    def _unique_devices(self) -> AgentSettings:
        check_unique_device_ids(self.devices)
        return self
