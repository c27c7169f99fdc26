"""Report by exception: send a point when it changed by more than its deadband, or when it has
been silent for ``max_silent_s``, whichever comes first.

Deadbands come from the profile (``deadband`` of a point, in engineering units); a point
without one is reported on any change. Booleans and strings are reported on any change.

Values read right after a command (what it wrote, read back) are reported at once whether
they changed or not (:meth:`ChangeFilter.report_now`): the hub's latest view then shows the
command's effect for every consumer, not only after ``max_silent_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from device_profiles import DeviceProfile, Value

__all__ = ["ChangeFilter"]


@dataclass
class ChangeFilter:
    profile: DeviceProfile
    max_silent_s: float
    enabled: bool = True
    suppressed: int = 0
    _last: dict[str, tuple[Value, int]] = field(default_factory=dict)

    def select(self, values: dict[str, Value], ts_ms: int) -> dict[str, Value]:
        """The values of this poll worth reporting (all of them when the filter is off)."""
        if not self.enabled:
            return values
        out: dict[str, Value] = {}
        silent_ms = self.max_silent_s * 1000
        for name, value in values.items():
            last = self._last.get(name)
            if last is None or ts_ms - last[1] >= silent_ms or self._changed(name, last[0], value):
                out[name] = value
                self._last[name] = (value, ts_ms)
            else:
                self.suppressed += 1
        return out

    def report_now(self, values: dict[str, Value], ts_ms: int) -> dict[str, Value]:
        """All of ``values``, recorded as reported at ``ts_ms`` (read back after a command)."""
        for name, value in values.items():
            self._last[name] = (value, ts_ms)
        return dict(values)

    def _changed(self, name: str, old: Value, new: Value) -> bool:
        point = self.profile.points[name]
        if not point.is_numeric or isinstance(old, bool | str) or isinstance(new, bool | str):
            return old != new
        return abs(new - old) > (point.deadband or 0.0)
