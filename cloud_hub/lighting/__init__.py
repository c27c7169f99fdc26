"""Lighting strategies: scheduled commands (dimming, lamps on/off) to groups of poles.

A strategy (:mod:`~cloud_hub.lighting.spec`) selects devices as group commands do and lists
steps at local clock times or relative to sunrise/sunset (:mod:`~cloud_hub.lighting.sun`);
:mod:`~cloud_hub.lighting.schedule` computes their instants and
:mod:`~cloud_hub.lighting.effect` the lamp state each leaves (pure functions);
:mod:`~cloud_hub.lighting.scheduler` is the leader duty that sends them, each at most once
(:mod:`~cloud_hub.lighting.models`, :mod:`~cloud_hub.lighting.store`);
:mod:`~cloud_hub.lighting.service` is what the API calls.

Errors::

    CommandRejected (device_profiles)   a step no selected device's profile accepts (API: 422)
    LookupError
    └── NothingInEffect                 apply-now with no step in the last 8 days (API: 409)
    ValueError
    └── NoSunEvent                      no sunrise/sunset that day (the step is skipped)
"""

from cloud_hub.lighting.effect import PointState, states_after
from cloud_hub.lighting.models import FIRING_OUTCOMES, LightingFiringRow, LightingStrategyRow
from cloud_hub.lighting.schedule import (
    Firing,
    Schedule,
    Skipped,
    firings_between,
    in_effect,
    next_firing,
)
from cloud_hub.lighting.scheduler import GroupCommands, LightingScheduler
from cloud_hub.lighting.service import Lighting, NothingInEffect
from cloud_hub.lighting.settings import LightingSettings
from cloud_hub.lighting.spec import StepSpec, StrategySelector, StrategySpec, parse_at
from cloud_hub.lighting.store import LightingStore, spec_of
from cloud_hub.lighting.sun import NoSunEvent, sun_event

__all__ = [
    "FIRING_OUTCOMES",
    "Firing",
    "GroupCommands",
    "Lighting",
    "LightingFiringRow",
    "LightingScheduler",
    "LightingSettings",
    "LightingStore",
    "LightingStrategyRow",
    "NoSunEvent",
    "NothingInEffect",
    "PointState",
    "Schedule",
    "Skipped",
    "StepSpec",
    "StrategySelector",
    "StrategySpec",
    "firings_between",
    "in_effect",
    "next_firing",
    "parse_at",
    "spec_of",
    "states_after",
    "sun_event",
]
