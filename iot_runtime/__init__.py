"""What every process of ours shares: logging set-up and validated configuration loading."""

from iot_runtime.config import ConfigError, FileAndEnvSettings, load_settings
from iot_runtime.config_paths import ConfigPath, resolve_config_path
from iot_runtime.logging import configure_logging

__all__ = [
    "ConfigError",
    "ConfigPath",
    "FileAndEnvSettings",
    "configure_logging",
    "load_settings",
    "resolve_config_path",
]
