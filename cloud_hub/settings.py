"""The hub's configuration: one YAML file and/or ``HUB_*`` environment variables."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cloud_hub.coap.settings import CoapIngressSettings
from cloud_hub.console.settings import ConsoleSettings
from cloud_hub.dead_letters.store import DeadLetterSettings
from cloud_hub.events.log import EventLogSettings
from cloud_hub.events.webhooks import WebhookSettings
from cloud_hub.ingest.agent_limits import AgentLimitSettings
from cloud_hub.ingest.settings import IngestSettings, SpoolSettings
from cloud_hub.lighting.settings import LightingSettings
from cloud_hub.provisioning import ProvisioningSettings
from cloud_hub.storage.settings import SqliteStoreSettings, StorageSettings
from iot_runtime import FileAndEnvSettings, resolve_config_path
from iot_runtime.logging import LogFormat
from iot_runtime.mqtt import InboundWindow, MqttSettings

__all__ = ["ApiSettings", "HubSettings", "resolve_sqlite_url"]


def _proxy_address(entry: str) -> str:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(
            f"{entry!r} is not an IP address or network (CIDR); a proxy is trusted by its "
            "address, '*' is not accepted"
        ) from None
    return entry


ProxyAddress = Annotated[str, AfterValidator(_proxy_address)]


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    trusted_proxies: list[ProxyAddress] = Field(
        default_factory=list,
        description="Reverse proxies (IP addresses or networks, e.g. 10.0.0.5 or 10.0.0.0/24) "
        "whose X-Forwarded-For / X-Forwarded-Proto headers name the client; from anyone else "
        "they are ignored. Default: none, the connecting address is the client (as the claim "
        "rate limit keys on it).",
    )


class HubSettings(FileAndEnvSettings):
    """Settings of the hub process."""

    model_config = SettingsConfigDict(env_prefix="HUB_", env_nested_delimiter="__", extra="forbid")

    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    telemetry_inbound: InboundWindow = Field(
        default_factory=InboundWindow,
        description="Back-pressure of the telemetry session: stop reading the broker's socket at "
        "`high` received messages not yet taken by ingest, read again at `low`, reconnect (the "
        "broker redelivers) rather than queue `cap`.",
    )
    agent_limits: AgentLimitSettings = Field(
        default_factory=AgentLimitSettings,
        description="What one agent may send: messages and bytes per second, message size; "
        "the excess is shed, counted and alarmed (agent_flooding).",
    )
    client_id: str = Field(
        default="cloud-hub",
        description="MQTT client id prefix of this hub process (-control and -telemetry added).",
    )
    shared_subscription_group: str | None = Field(
        default=None,
        description="MQTT 5 shared subscription group: hub processes in one group split telemetry.",
    )
    leader_lease_s: float = Field(
        default=15.0,
        ge=1,
        le=300,
        description="Leader lease time: with a group, how soon another process takes over the "
        "alarms, webhooks and command sweep of one that died (renewed every third of it).",
    )
    event_log: EventLogSettings = Field(
        default_factory=EventLogSettings,
        description="The durable log of status, alarm and command events that webhooks read.",
    )
    storage: StorageSettings = Field(default_factory=SqliteStoreSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    registry_url: str = Field(
        default="sqlite+aiosqlite:///var/registry.db",
        validate_default=True,
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file or postgresql+asyncpg://... "
        "(a relative SQLite file is relative to the config file's folder).",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Migrate the registry at start-up; if false, run `cloud-hub migrate` first.",
    )
    api: ApiSettings = Field(default_factory=ApiSettings)
    console: ConsoleSettings = Field(
        default_factory=ConsoleSettings,
        description="The operators' web console at /: time zone, sign-in lifetime, map tiles.",
    )
    provisioning: ProvisioningSettings = Field(default_factory=ProvisioningSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    coap: CoapIngressSettings = Field(default_factory=CoapIngressSettings)
    dead_letters: DeadLetterSettings = Field(
        default_factory=DeadLetterSettings,
        description="How refused messages and readings are kept in the registry.",
    )
    presence_missed_reports: int = Field(
        default=3,
        ge=1,
        le=100,
        description="An agent without a connection (NB-IoT) is offline after missing this many "
        "of its reports (its birth message says how often it reports).",
    )
    lighting: LightingSettings = Field(
        default_factory=LightingSettings,
        description="The scheduler of the lighting strategies (a leader duty).",
    )
    command_ttl_s: float = Field(
        default=3600, gt=0, description="Default time a command may wait for its agent."
    )
    log_level: str = "INFO"
    log_format: LogFormat = "auto"

    @field_validator("registry_url")
    @classmethod
    def _resolve_sqlite_file(cls, url: str) -> str:
        return resolve_sqlite_url(url)

    @model_validator(mode="after")
    def _default_spool_path(self) -> HubSettings:
        if self.spool.path is None:  # one spool a process: named by its client id
            path = resolve_config_path(Path(f"var/spool-{self.client_id}.db"))
            self.spool = self.spool.model_copy(update={"path": path})
        return self


def resolve_sqlite_url(url: str) -> str:
    """``url`` with a relative SQLite file resolved as a configured path
    (:func:`~iot_runtime.resolve_config_path`); other URLs unchanged. ValueError if ``url``
    is not a database URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {exc}") from None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return url
    if database.startswith("file:"):  # an SQLite URI filename: left as written
        return url
    resolved = resolve_config_path(Path(database))
    if str(resolved) == database:
        return url
    return parsed.set(database=str(resolved)).render_as_string(hide_password=False)
