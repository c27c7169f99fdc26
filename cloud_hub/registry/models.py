"""Registry tables (SQLAlchemy 2): agents, devices and commands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AgentConfigRow",
    "AgentRow",
    "ApiKeyRow",
    "Base",
    "CommandGroupRow",
    "CommandRow",
    "DeviceRow",
]


class Base(DeclarativeBase):
    pass


class AgentRow(Base):
    __tablename__ = "agents"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    software_version: Mapped[str] = mapped_column(String(64), default="")
    state_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: an agent without a connection (NB-IoT) reports at least this often (its birth says)
    report_interval_s: Mapped[float | None] = mapped_column(Float)


#: the collection rate's window: readings are counted per 15 minutes of edge read time
COLLECTION_WINDOW_MS = 15 * 60 * 1000


class DeviceRow(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    agent_id: Mapped[str] = mapped_column(ForeignKey("agents.agent_id"), index=True)
    profile: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    site: Mapped[str | None] = mapped_column(String(64), index=True)
    pole: Mapped[str | None] = mapped_column(String(64))
    mount_position: Mapped[str | None] = mapped_column(String(64))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON)
    firmware_version: Mapped[str | None] = mapped_column(String(64))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: the poll plan: at least one reading this often (its agent's birth states it)
    reading_interval_s: Mapped[float | None] = mapped_column(Float)
    #: readings stored per collection window (COLLECTION_WINDOW_MS, by edge read time): the
    #: newest window seen, its count so far, and the window before it
    collect_window: Mapped[int | None] = mapped_column(BigInteger)
    collect_count: Mapped[int] = mapped_column(Integer, default=0)
    collect_previous: Mapped[int] = mapped_column(Integer, default=0)


class CommandRow(Base):
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_device_created", "device_id", "created_at"),)

    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.device_id"))
    agent_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    group_id: Mapped[str | None] = mapped_column(String(64), index=True)


class CommandGroupRow(Base):
    """A command sent to every device a selector picks (e.g. dim every lamp of one road)."""

    __tablename__ = "command_groups"

    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    rejected: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AgentConfigRow(Base):
    """The configuration the hub wants an agent to run, and what the agent said of it."""

    __tablename__ = "agent_configs"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    desired: Mapped[dict[str, Any]] = mapped_column(JSON)
    desired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reported_version: Mapped[int | None] = mapped_column(BigInteger)
    reported_status: Mapped[str | None] = mapped_column(String(16))
    reported_detail: Mapped[str | None] = mapped_column(Text)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    site: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
