"""Configuration pushed by the hub: validated, applied without a restart, reported back.

The hub publishes a :class:`~device_profiles.wire.DesiredConfig` (retained) on the agent's
``config/desired`` topic. Its ``config`` is a :class:`RemoteConfig`: the devices the agent
polls. The agent validates it completely (schema, profiles, drivers) before touching
anything, swaps the changed devices' pollers, keeps the unchanged ones running, stores the
applied configuration in ``data_dir/remote-config.json`` (so it survives a restart and takes
precedence over the file's ``devices``), and answers with a ``ReportedConfig``: ``applied``,
or ``rejected`` with every problem and its path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from device_profiles import ProfileError, validation_issues
from drivers import DriverError
from edge_agent.settings import DeviceConfig, check_unique_device_ids

__all__ = ["ConfigRejected", "RemoteConfig", "load_applied", "parse_remote", "store_applied"]

APPLIED_FILE = "remote-config.json"


class ConfigRejected(ValueError):
    """A desired configuration cannot be applied; the message lists why."""


class RemoteConfig(BaseModel):
    """The part of an agent's settings the hub may change remotely."""

    model_config = ConfigDict(extra="forbid")

    devices: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> RemoteConfig:
        check_unique_device_ids(self.devices)
        return self


def parse_remote(config: dict[str, Any]) -> RemoteConfig:
    try:
        return RemoteConfig.model_validate(config)
    except ValidationError as exc:
        raise ConfigRejected("; ".join(validation_issues(exc, config))) from exc


def store_applied(data_dir: Path, version: int, config: RemoteConfig) -> None:
    """Write atomically, so a crash leaves the old or the new file, never half of one."""
    path = data_dir / APPLIED_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "config": config.model_dump(mode="json")}))
    os.replace(tmp, path)


def load_applied(data_dir: Path) -> tuple[int, RemoteConfig] | None:
    path = data_dir / APPLIED_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
        return int(stored["version"]), parse_remote(stored["config"])
    except (OSError, ValueError, KeyError, TypeError, ConfigRejected, ProfileError, DriverError):
        return None  # an unreadable file is ignored (and replaced by the next push)
