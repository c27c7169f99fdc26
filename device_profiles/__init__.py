"""Device profiles (device types, declared in YAML) and the edge-hub wire contract.

This package imports nothing else of ours: the edge agent, the hub, the drivers and the
simulators all build on it.
"""

from device_profiles.errors import CommandRejected, ProfileError, format_location, validation_issues
from device_profiles.loader import (
    builtin_profile_names,
    load_builtin_profile,
    load_profile,
    parse_profile,
    profile_json_schema,
    resolve_profile,
)
from device_profiles.numbers import is_finite
from device_profiles.schema import (
    AlarmRule,
    Command,
    CommandParam,
    CommandWrite,
    Confirmation,
    DataType,
    DeviceProfile,
    ModbusLocation,
    ModbusTable,
    Point,
    PointWrite,
    Value,
    WriteCondition,
)

__all__ = [
    "AlarmRule",
    "Command",
    "CommandParam",
    "CommandRejected",
    "CommandWrite",
    "Confirmation",
    "DataType",
    "DeviceProfile",
    "ModbusLocation",
    "ModbusTable",
    "Point",
    "PointWrite",
    "ProfileError",
    "Value",
    "WriteCondition",
    "builtin_profile_names",
    "format_location",
    "is_finite",
    "load_builtin_profile",
    "load_profile",
    "parse_profile",
    "profile_json_schema",
    "resolve_profile",
    "validation_issues",
]
