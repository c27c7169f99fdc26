"""The hub's registry of agents, devices and commands (SQLite by default, PostgreSQL too)."""

from cloud_hub.registry.models import (
    COLLECTION_WINDOW_MS,
    AgentConfigRow,
    AgentRow,
    ApiKeyRow,
    CommandGroupRow,
    CommandRow,
    DeviceRow,
)
from cloud_hub.registry.store import (
    TERMINAL_STATUSES,
    DeviceFilter,
    Registry,
    RegistryError,
    utcnow,
)

__all__ = [
    "COLLECTION_WINDOW_MS",
    "TERMINAL_STATUSES",
    "AgentConfigRow",
    "AgentRow",
    "ApiKeyRow",
    "CommandGroupRow",
    "CommandRow",
    "DeviceFilter",
    "DeviceRow",
    "Registry",
    "RegistryError",
    "utcnow",
]
