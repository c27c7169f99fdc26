"""The ``webhooks`` table (SQLAlchemy 2, on the registry's ``Base``): who gets hub events by HTTP.

The secret is stored as is (not hashed): the hub needs it to sign every delivery. It is shown
once, when the webhook is created. ``site``: only the events of that site are delivered (see
:mod:`cloud_hub.sites`; none: every site's). ``event_cursor`` is how far in the durable event log
(``hub_events``) the webhook's deliveries have got.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.registry.models import Base

__all__ = ["WebhookRow"]


class WebhookRow(Base):
    __tablename__ = "webhooks"

    webhook_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    #: event kinds delivered (telemetry, status, alarm, command); empty: all of them
    kinds: Mapped[list[Any]] = mapped_column(JSON)
    #: only events of this site are delivered; None: every site's
    site: Mapped[str | None] = mapped_column(String(64))
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    #: deliveries given up on (after every attempt failed, or refused with a 4xx)
    failed_deliveries: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: ``hub_events.seq`` of the last durable event this webhook is done with (delivered or
    #: given up); the leader's relay goes on after it (see :mod:`cloud_hub.events.relay`)
    event_cursor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
