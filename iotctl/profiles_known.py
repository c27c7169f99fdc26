"""The profile of a device the hub names, if this installation knows it (built-in profiles).

Values are then shown as the profile says (precision, enum labels); a profile the hub has but
this ``iotctl`` does not is no error: its values are shown as the API gives them.
"""

from __future__ import annotations

from device_profiles import DeviceProfile, ProfileError, load_builtin_profile

__all__ = ["local_profile"]


def local_profile(name: object) -> DeviceProfile | None:
    """The built-in profile ``name``, or None when there is none by that name."""
    if not isinstance(name, str):
        return None
    try:
        return load_builtin_profile(name)
    except ProfileError:
        return None
