"""The ``dead_letters`` table (SQLAlchemy 2, on the registry's ``Base``): what ingest refused.

Every message or reading the hub could not take (unknown agent, device or point, a wrong type,
a broken envelope, a store that refused the data for good) is kept here with the reason, so an
operator can see and fix the cause after a restart too. ``payload`` holds at most the first
4,096 bytes of what was received, ``payload_size`` how many were received: only a payload kept
whole can be replayed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.registry.models import Base

__all__ = ["DEAD_LETTER_PAYLOAD_MAX", "DeadLetterRow"]

#: bytes of a refused payload that are kept
DEAD_LETTER_PAYLOAD_MAX = 4096


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_agent_received", "agent_id", "received_at"),)

    #: increasing: the newest dead letter has the highest id
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    #: the MQTT topic, ``coap:/<path>`` or ``store:<device>``
    source: Mapped[str] = mapped_column(String(256))
    #: the agent whose namespace it came from, when the source names one
    agent_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    #: at most DEAD_LETTER_PAYLOAD_MAX bytes of what was received
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    #: bytes received: more than ``len(payload)`` when the payload was truncated
    payload_size: Mapped[int] = mapped_column(Integer)
