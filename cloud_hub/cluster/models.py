"""The ``hub_leases`` table (SQLAlchemy 2, on the registry's ``Base``): who leads the hubs.

One row per lease name. ``holder`` is the id of the hub process holding it and
``expires_at_ms`` (wall clock, ms since the epoch, written by the holder) when the lease is
free for another process to take if the holder has not renewed it. See :mod:`cloud_hub.cluster.lease`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.registry.models import Base

__all__ = ["LeaseRow"]


class LeaseRow(Base):
    __tablename__ = "hub_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``{client_id}-{hostname}-{pid}-{random}`` of the holding process
    holder: Mapped[str] = mapped_column(String(255))
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    #: when the current holder took the lease (renewals keep it)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
