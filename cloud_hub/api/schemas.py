"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.json_schema import WithJsonSchema

from cloud_hub.registry.store import TAG_KEY_PATTERN as REGISTRY_TAG_KEY
from device_profiles import Value

__all__ = [
    "AgentOut",
    "CommandCreate",
    "CommandOut",
    "DeviceOut",
    "DeviceUpdate",
    "LatestTelemetry",
    "PointValue",
    "QueryTime",
    "UtcDateTime",
]


def _as_utc(value: datetime) -> datetime:
    """A naive time (SQLite drops the offset) is UTC; the schema promises RFC 3339 date-time."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: A response time: always with an offset (``...Z``/``+00:00``), as ``format: date-time`` requires.
UtcDateTime = Annotated[datetime, AfterValidator(_as_utc)]


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", re.I)


def _rfc3339(value: object) -> object:
    """Only what ``format: date-time`` (RFC 3339) says: pydantic alone also takes a date, a
    time without an offset and a number of seconds (``start=0``)."""
    if isinstance(value, str):
        if not _RFC3339.fullmatch(value):
            raise ValueError(
                "expected an RFC 3339 date-time with an offset, e.g. 2026-12-03T08:00:00Z"
            )
        return value.upper()
    return value


#: A time in a query: an RFC 3339 ``date-time``, with its offset (``Z``, ``+08:00``).
QueryTime = Annotated[datetime, BeforeValidator(_rfc3339)]


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    agent_id: str
    profile: str
    status: str
    last_seen: UtcDateTime | None = Field(description="When the edge last read the device.")
    site: str | None = None
    pole: str | None = None
    mount_position: str | None = None
    lat: float | None = None
    lon: float | None = None
    tags: dict[str, str] | None = None
    firmware_version: str | None = None


#: A site, pole or mount position (as provisioning takes them).
Label = Annotated[str, Field(min_length=1, max_length=64)]
#: A tag's key: ASCII letters, digits, ``_ . : -`` (a list's ``?tag=key=value`` filter and the
#: console's ``key=value`` lines split on ``=``; no space, no ``;``).
TAG_KEY_PATTERN = rf"^{REGISTRY_TAG_KEY}$"
TagKey = Annotated[str, Field(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, Field(max_length=64)]
MAX_TAGS = 32
#: A device's tags (the schema says what pydantic checks: no key outside the pattern).
Tags = Annotated[
    dict[TagKey, TagValue],
    Field(max_length=MAX_TAGS),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_TAGS,
            "propertyNames": {"pattern": TAG_KEY_PATTERN},
            "additionalProperties": {"type": "string", "maxLength": 64},
        }
    ),
]
#: Where the fields of a device's position go together: both, or neither.
_POSITION_WHOLE: dict[str, Any] = {
    "dependentRequired": {"lat": ["lon"], "lon": ["lat"]},
    "anyOf": [
        {"properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
        {"properties": {"lat": {"type": "null"}, "lon": {"type": "null"}}},
    ],
}


class DeviceUpdate(BaseModel):
    """A device's metadata to change: only the fields given change; ``null`` clears one.
    ``lat`` and ``lon`` go together (both numbers, or both ``null`` to clear the position);
    ``tags`` replaces the whole tag map."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            **_POSITION_WHOLE,
            "examples": [{"pole": "P-0112", "mount_position": "top", "lat": 24.48, "lon": 118.09}],
        },
    )

    site: Label | None = Field(
        default=None, description="A site-scoped key may set its own site only, never clear it."
    )
    pole: Label | None = None
    mount_position: Label | None = None
    # strict: a JSON number, never ``true`` or ``"24.5"``
    lat: float | None = Field(
        default=None, ge=-90, le=90, strict=True, description="Decimal degrees, with lon."
    )
    lon: float | None = Field(
        default=None, ge=-180, le=180, strict=True, description="Decimal degrees, with lat."
    )
    tags: Tags | None = Field(default=None, description="Replaces every tag of the device.")

    @model_validator(mode="after")
    def _position_whole(self) -> DeviceUpdate:
        given = {"lat", "lon"} & self.model_fields_set
        if len(given) == 1:
            (alone,) = given
            raise ValueError(
                f"{alone} without {'lon' if alone == 'lat' else 'lat'}: give lat and lon "
                "together (both null to clear the position)"
            )
        if given and (self.lat is None) != (self.lon is None):
            raise ValueError(
                "lat and lon are both numbers or both null (clearing the position), not one of each"
            )
        return self

    def changes(self) -> dict[str, Any]:
        """The fields given, by name, with their new values (None: cleared)."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name in self.model_fields_set
        }


class AgentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    agent_id: str
    state: str = Field(description="online, offline (birth message / Last Will) or unknown")
    software_version: str
    state_changed_at: UtcDateTime | None
    last_seen: UtcDateTime | None
    health: dict[str, Any] | None = Field(
        default=None, description="The agent's latest health report (CPU, memory, buffer, devices)."
    )


class PointValue(BaseModel):
    value: Value
    ts: UtcDateTime = Field(description="When the edge read the value (UTC).")
    unit: str


class LatestTelemetry(BaseModel):
    device_id: str
    profile: str
    points: dict[str, PointValue]


class CommandCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "set_dimming", "params": {"level": 40}}]},
    )

    name: str = Field(min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    ttl_s: float | None = Field(
        default=None, gt=0, le=7 * 86400, description="How long the command may wait to run."
    )


class CommandOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    command_id: str
    device_id: str
    agent_id: str
    name: str
    params: dict[str, Any]
    status: str = Field(
        description="queued, sent, delivered, succeeded, failed, rejected, expired or timed_out"
    )
    detail: str
    created_at: UtcDateTime
    updated_at: UtcDateTime
