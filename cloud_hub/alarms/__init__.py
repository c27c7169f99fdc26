"""Alarms: profile rules evaluated on telemetry, offline alarms, and their life cycle."""

from cloud_hub.alarms.engine import OFFLINE_SEVERITY, AlarmEngine, Clock, ProfileLookup
from cloud_hub.alarms.models import ALARM_STATES, OPEN_STATES, AlarmOut, AlarmRow, AlarmTimerRow
from cloud_hub.alarms.store import (
    AlarmAlreadyAcknowledged,
    AlarmError,
    AlarmNotFound,
    AlarmPage,
    AlarmStore,
    InvalidCursor,
)

__all__ = [
    "ALARM_STATES",
    "OFFLINE_SEVERITY",
    "OPEN_STATES",
    "AlarmAlreadyAcknowledged",
    "AlarmEngine",
    "AlarmError",
    "AlarmNotFound",
    "AlarmOut",
    "AlarmPage",
    "AlarmRow",
    "AlarmStore",
    "AlarmTimerRow",
    "Clock",
    "InvalidCursor",
    "ProfileLookup",
]
