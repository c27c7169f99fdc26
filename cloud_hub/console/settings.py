"""Settings of the console (``console`` in hub.yaml)."""

from __future__ import annotations

from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ConsoleSettings"]


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(
        default="Asia/Shanghai", description="The county's time zone: 'today' on the overview."
    )
    session_hours: float = Field(default=12, gt=0, le=24 * 30, description="Sign-in lifetime.")
    map_tiles_url: str | None = Field(
        default=None,
        description="A tile server the county runs, e.g. http://tiles.county.local/{z}/{x}/{y}.png "
        "(none by default: the map draws its sites on a plain base, with no internet).",
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Shanghai)") from None
        return value

    @field_validator("map_tiles_url")
    @classmethod
    def _tiles(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("an http(s) URL with {z}, {x} and {y}")
        if not all(f"{{{k}}}" in value for k in "zxy"):
            raise ValueError("the URL needs {z}, {x} and {y}")
        return value

    @property
    def tiles_origin(self) -> str | None:
        if self.map_tiles_url is None:
            return None
        parts = urlsplit(self.map_tiles_url)
        return f"{parts.scheme}://{parts.netloc}"
