"""The telemetry store interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from device_profiles import Value

__all__ = ["LatestValue", "StorageError", "StoredReading", "TelemetryStore"]


class StorageError(RuntimeError):
    """The store could not take or answer a request (server down, rejected write, ...)."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A validated reading with the tags it is stored under."""

    device_id: str
    agent_id: str
    profile: str
    ts_ms: int
    values: dict[str, Value]


@dataclass(frozen=True, slots=True)
class LatestValue:
    value: Value
    ts_ms: int


class TelemetryStore(Protocol):
    async def start(self) -> None:
        """Connect and prepare (create the database or tables)."""

    async def close(self) -> None: ...

    async def write(self, readings: Sequence[StoredReading]) -> None:
        """Store readings; writing the same reading again changes nothing (idempotent)."""

    async def latest(
        self, device_id: str, profile: str, points: Sequence[str]
    ) -> dict[str, LatestValue]:
        """The newest value of each of ``points`` of a device (absent when it has none)."""
