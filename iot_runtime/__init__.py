"""What every process of ours shares: logging set-up and validated configuration loading."""

from iot_runtime.config import ConfigError, FileAndEnvSettings, load_settings
from iot_runtime.logging import configure_logging

__all__ = ["ConfigError", "FileAndEnvSettings", "configure_logging", "load_settings"]
