"""Where the hub keeps telemetry: the settings of each telemetry store (``storage`` in
hub.yaml, chosen by ``backend``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from iot_runtime import ConfigPath

__all__ = ["InfluxV1Settings", "InfluxV2Settings", "SqliteStoreSettings", "StorageSettings"]


class InfluxV1Settings(BaseModel):
    """InfluxDB through its 1.x HTTP API (line protocol and InfluxQL); also served by
    InfluxDB 2.x's v1 compatibility API and by InfluxDB 3."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["influxdb1"] = "influxdb1"
    url: str = Field(description="Base URL, e.g. http://127.0.0.1:8086")
    database: str = "iot"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(
        default=None,
        description="API token (InfluxDB 2.x v1 compatibility API, InfluxDB 3): sent as "
        "'Authorization: Token ...' instead of username and password.",
    )
    create_database: bool = Field(
        default=True,
        description="CREATE DATABASE at start-up (InfluxDB 1.x; set false for 2.x and 3.x).",
    )
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> InfluxV1Settings:
        if self.token is not None and self.username is not None:
            raise ValueError("set either token or username/password, not both")
        return self


class InfluxV2Settings(BaseModel):
    """InfluxDB 2.x (or 3.x) through ``influxdb-client``: writes to ``/api/v2/write`` with an
    organisation, a bucket and a token; queries in Flux (2.x) or InfluxQL on the v1
    compatibility ``/query`` endpoint (2.x with a DBRP mapping of the bucket, and 3.x, which
    has no Flux)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["influxdb2"] = "influxdb2"
    url: str = Field(description="Base URL, e.g. http://127.0.0.1:8086")
    org: str = Field(description="Organisation name (InfluxDB 3 ignores it).")
    bucket: str = Field(description="Bucket (InfluxDB 3: the database).")
    token: SecretStr = Field(description="API token with write and read access to the bucket.")
    query_language: Literal["flux", "influxql"] = Field(
        default="flux",
        description="flux for InfluxDB 2.x; influxql for InfluxDB 3 (or 2.x with a DBRP mapping).",
    )
    timeout_s: float = Field(default=10.0, gt=0)


class SqliteStoreSettings(BaseModel):
    """The embedded telemetry store: one SQLite file, for the demo and single sites."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["sqlite"] = "sqlite"
    path: ConfigPath = Field(
        default=Path("var/telemetry.db"),
        validate_default=True,
        description="SQLite file; a relative path is relative to the config file's folder.",
    )


StorageSettings = Annotated[
    InfluxV1Settings | InfluxV2Settings | SqliteStoreSettings, Field(discriminator="backend")
]
