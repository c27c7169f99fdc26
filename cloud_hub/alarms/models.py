"""Alarm tables (SQLAlchemy 2, on the registry's ``Base``): alarms and running rule timers.

``alarms`` holds every alarm raised, open or not: ``state`` is ``active`` (raised, nobody has
acknowledged it), ``acknowledged`` (an operator has seen it, the condition still holds) or
``cleared`` (the condition stopped holding; ``acknowledged_*`` stay set if it was acknowledged,
and a cleared alarm may still be acknowledged afterwards).

``alarm_timers`` holds, for a rule with a duration (``for_s``), the edge time from which its
condition has held without a break, so that a hub restart neither forgets a running duration
nor starts it again.

:class:`AlarmOut` is an alarm's public view, as the API returns it and alarm events carry it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import JSON, BigInteger, DateTime, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.registry.models import Base

__all__ = ["ALARM_STATES", "OPEN_STATES", "AlarmOut", "AlarmRow", "AlarmTimerRow"]

#: Every state an alarm can be in.
ALARM_STATES = ("active", "acknowledged", "cleared")
#: States of an alarm whose condition still holds: no second alarm is raised for its rule.
OPEN_STATES = ("active", "acknowledged")


class AlarmRow(Base):
    __tablename__ = "alarms"
    __table_args__ = (
        Index("ix_alarms_device_state", "device_id", "state"),
        Index("ix_alarms_raised", "raised_at", "alarm_id"),
    )

    alarm_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    #: None for an alarm about a whole agent (``agent_offline``)
    device_id: Mapped[str | None] = mapped_column(String(64))
    agent_id: Mapped[str] = mapped_column(String(64), index=True)
    #: the profile's alarm rule name, or ``device_offline`` / ``agent_offline``
    rule: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    #: edge read time of the reading that completed the condition's duration
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: the point's value when raised (None for offline alarms)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_note: Mapped[str | None] = mapped_column(Text)
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AlarmTimerRow(Base):
    __tablename__ = "alarm_timers"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: edge time (ms) of the first reading of the unbroken run where the condition holds
    since_ms: Mapped[int] = mapped_column(BigInteger)


class AlarmOut(BaseModel):
    """An alarm as the API returns it and ``alarm`` events carry it."""

    model_config = ConfigDict(from_attributes=True)

    alarm_id: str
    device_id: str | None = Field(description="None for an alarm about a whole agent.")
    agent_id: str
    rule: str = Field(description="The profile's rule name, device_offline or agent_offline.")
    severity: str = Field(description="critical, major, minor, warning or info")
    state: str = Field(description="active, acknowledged or cleared")
    raised_at: datetime = Field(description="Edge read time of the reading that raised it.")
    value: bool | int | float | str | None
    message: str
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledged_note: str | None
    cleared_at: datetime | None

    @field_validator("raised_at", "acknowledged_at", "cleared_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite hands back naive datetimes for timezone-aware columns
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value
