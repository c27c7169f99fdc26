"""Settings of ingest: which readings the hub takes (``ingest``), and its on-disk telemetry
spool (``spool``, :mod:`cloud_hub.ingest.spool`)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from iot_runtime import ConfigPath

__all__ = ["IngestSettings", "SpoolSettings"]


class SpoolSettings(BaseModel):
    """The hub's on-disk telemetry spool (see :mod:`cloud_hub.ingest.spool`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Spool readings to disk in a store outage.")
    path: ConfigPath | None = Field(
        default=None,
        description="SQLite file of the spool; default var/spool-<client_id>.db (one a process), "
        "relative to the config file's folder.",
    )
    after_s: float = Field(
        default=0.0,
        ge=0,
        description="How long the store must be unavailable before spooling (0: at once; the "
        "broker keeps only max_queued_messages meanwhile).",
    )
    max_bytes: int = Field(
        default=1 << 30, gt=0, description="Spool size at which messages are held back instead."
    )


class IngestSettings(BaseModel):
    """What readings the hub takes: read times within a window the store can keep and that
    cannot pin a device's latest value in the future (a device clock in 2100). A reading
    outside it is dead-lettered (replayable once the clock is fixed); the others beside it
    are stored."""

    model_config = ConfigDict(extra="forbid")

    min_ts: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Readings read before this time are refused (a device clock never set).",
    )
    max_ahead_s: float = Field(
        default=3600,
        gt=0,
        le=366 * 86400,
        description="Readings read more than this far ahead of the hub's clock are refused.",
    )

    @field_validator("min_ts")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2000-01-01T00:00:00Z")
        if value.timestamp() < 0:
            raise ValueError("must not be before 1970-01-01")
        return value
