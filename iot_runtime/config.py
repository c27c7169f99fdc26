"""Validated configuration from a YAML file and environment variables.

Environment variables win over the file; nested settings use ``__``
(``HUB_MQTT__PORT=1884``). Every problem is reported with its setting path, e.g.
``hub.yaml: mqtt.port: Input should be less than or equal to 65535 (got 70000)``.
Relative paths resolve against the file's folder (:mod:`iot_runtime.config_paths`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from device_profiles.errors import ProfileError, validation_issues
from device_profiles.yaml_io import load_yaml_mapping
from iot_runtime.config_paths import relative_to

__all__ = ["ConfigError", "FileAndEnvSettings", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


class ConfigError(ValueError):
    """Configuration is invalid; ``issues`` holds one ``setting.path: reason`` per problem."""

    def __init__(self, source: str, issues: list[str]) -> None:
        self.source = source
        self.issues = issues
        super().__init__(f"invalid configuration ({source}):\n  " + "\n  ".join(issues))


class FileAndEnvSettings(BaseSettings):
    """Base of our process settings: environment variables override the YAML file's values."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


def load_settings(cls: type[S], path: Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from ``path`` (optional YAML), the environment and ``overrides``.

    With a file, relative paths resolve against the file's folder, not the working directory.
    """
    source = str(path) if path is not None else "environment"
    try:
        data: dict[str, Any] = load_yaml_mapping(path) if path is not None else {}
    except ProfileError as exc:
        raise ConfigError(source, exc.issues) from exc
    data.update(overrides)
    try:
        if path is None:
            return cls(**data)
        with relative_to(path.parent):
            return cls(**data)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        issues = validation_issues(exc, data)
        if prefix:
            issues.append(
                f"(environment variables {prefix}* override the file; use __ for nesting)"
            )
        raise ConfigError(source, issues) from exc
