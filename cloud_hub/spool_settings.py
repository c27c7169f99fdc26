"""Settings of the hub's on-disk telemetry spool (:mod:`cloud_hub.spool`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from iot_runtime import ConfigPath

__all__ = ["SpoolSettings"]


class SpoolSettings(BaseModel):
    """The hub's on-disk telemetry spool (see :mod:`cloud_hub.spool`)."""

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
