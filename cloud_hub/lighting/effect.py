"""What a strategy's steps do to the lamps: the state of the points they write, step by step.

A step is a command; each profile of the selected devices resolves it to point writes (the
smart pole's ``set_dimming 100`` writes ``dimming 100`` then ``lamp_on true``; ``set_dimming
0`` and ``lamp_off`` only ``lamp_on false``, keeping the level). Folding the writes in time
order gives the state after each step (``lamp_on``, ``dimming``): what the preview shows, so
an operator sees "on at 100 %" or "off", not only the command's name. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cloud_hub.lighting.schedule import Firing
from device_profiles import CommandRejected, DeviceProfile, Value

__all__ = ["PointState", "states_after"]

#: per profile name: the value of each point the strategy's steps wrote so far
PointState = dict[str, dict[str, Value]]


def states_after(
    profiles: Mapping[str, DeviceProfile],
    firings: Sequence[Firing],
    earlier: Sequence[Firing] = (),
) -> list[PointState]:
    """The state after each of ``firings`` (in time order), starting from the state the
    ``earlier`` firings left; a profile that refuses a step keeps its state for it."""
    state: PointState = {name: {} for name in profiles}
    for firing in earlier:
        _apply(profiles, state, firing)
    out: list[PointState] = []
    for firing in firings:
        _apply(profiles, state, firing)
        out.append({name: dict(points) for name, points in state.items()})
    return out


def _apply(profiles: Mapping[str, DeviceProfile], state: PointState, firing: Firing) -> None:
    for name, profile in profiles.items():
        try:
            writes = profile.resolve_command(firing.command, firing.params)
        except CommandRejected:
            continue
        for write in writes:
            if not profile.points[write.point].momentary:
                state[name][write.point] = write.value
