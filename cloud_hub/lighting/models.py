"""Lighting tables (SQLAlchemy 2, on the registry's ``Base``): strategies and their firings.

``lighting_strategies`` holds each strategy as written (see :mod:`cloud_hub.lighting.spec`).
``lighting_firings`` holds what the scheduler did for each step at each scheduled instant,
and what ``apply-now`` did: the row is inserted *before* the command is sent, and
``UNIQUE (strategy_id, step, scheduled_for)`` makes a second insert fail, so a scheduled step
is sent at most once, across restarts and leader failovers.

``outcome``: ``sending`` (claimed, the command being sent; a row left so means the process
stopped in between), ``sent`` (a command group was created: ``group_id``), ``rejected`` (no
selected device accepted the command), ``failed`` (an error, in ``detail``), ``missed`` (the
instant passed more than ``catch_up_s`` before the scheduler saw it: nothing sent).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.registry.models import Base

__all__ = ["FIRING_OUTCOMES", "LightingFiringRow", "LightingStrategyRow"]

FIRING_OUTCOMES = ("sending", "sent", "rejected", "failed", "missed")


class LightingStrategyRow(Base):
    __tablename__ = "lighting_strategies"

    strategy_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Shanghai")
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    weekdays: Mapped[list[str]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: the scheduler considers firings after this instant only (an edit starts afresh)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LightingFiringRow(Base):
    __tablename__ = "lighting_firings"
    __table_args__ = (
        UniqueConstraint("strategy_id", "step", "scheduled_for", name="uq_lighting_firings_once"),
        Index("ix_lighting_firings_strategy_scheduled", "strategy_id", "scheduled_for"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    strategy_id: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    #: the instant the step was scheduled for (UTC, whole seconds); apply-now: when asked
    scheduled_for: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: when the scheduler claimed it (or recorded it missed)
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    trigger: Mapped[str] = mapped_column(String(16))  # schedule | apply_now
    command: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    group_id: Mapped[str | None] = mapped_column(String(64))
