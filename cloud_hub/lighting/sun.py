"""Sunrise and sunset of a place on a local date (astral), as UTC instants.

Near the poles the sun may not rise or set on a date: :class:`NoSunEvent` says so (astral's
``ValueError`` translated), and the schedule skips that step on that day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sunrise, sunset

__all__ = ["NoSunEvent", "sun_event"]


class NoSunEvent(ValueError):
    """The sun does not rise (or set) at this place on this date."""

    def __init__(self, event: str, day: date, reason: str) -> None:
        super().__init__(f"no {event} on {day.isoformat()}: {reason}")
        self.event = event
        self.day = day
        self.reason = reason


def sun_event(
    event: Literal["sunrise", "sunset"], lat: float, lon: float, day: date, zone: ZoneInfo
) -> datetime:
    """When ``event`` happens at ``lat``/``lon`` on the local date ``day`` of ``zone`` (UTC,
    to the second); :class:`NoSunEvent` when it does not happen that day."""
    observer = Observer(latitude=lat, longitude=lon)
    compute = sunrise if event == "sunrise" else sunset
    try:
        found = compute(observer, date=day, tzinfo=zone)
    except (ValueError, ArithmeticError) as exc:
        raise NoSunEvent(event, day, str(exc) or type(exc).__name__) from exc
    return found.astimezone(UTC).replace(microsecond=0)
