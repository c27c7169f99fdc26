"""The ``hub_events`` table (SQLAlchemy 2, on the registry's ``Base``): the durable event log.

Every hub process appends the status, alarm and command events it sees; ``event_key`` names
the fact (the same agent state seen by two processes has one key), so a fact is stored once.
``seq`` orders the log; the webhook relay reads it in ``seq`` order after each webhook's
cursor (``webhooks.event_cursor``). See :mod:`cloud_hub.events.log`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.registry.models import Base

__all__ = ["HubEventRow"]


class HubEventRow(Base):
    __tablename__ = "hub_events"
    # AUTOINCREMENT on SQLite: a seq is never reused, even after pruning emptied the table
    __table_args__ = {"sqlite_autoincrement": True}  # noqa: RUF012 - SQLAlchemy's own attribute

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_key: Mapped[str] = mapped_column(String(255), unique=True)
    #: status, alarm or command (telemetry is never logged)
    kind: Mapped[str] = mapped_column(String(16))
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    agent_id: Mapped[str | None] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: when the appending process wrote it (for retention)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
