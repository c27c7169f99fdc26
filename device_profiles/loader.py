"""Load device profiles from YAML files or from the profiles shipped with this package."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from device_profiles.errors import ProfileError, validation_issues
from device_profiles.schema import DeviceProfile
from device_profiles.yaml_io import load_yaml_mapping, parse_yaml_mapping

__all__ = [
    "builtin_profile_names",
    "is_profile_path",
    "load_builtin_profile",
    "load_profile",
    "parse_profile",
    "profile_json_schema",
    "resolve_profile",
]

_PACKAGE_DIR = "profiles"


def parse_profile(data: dict[str, Any], source: str | Path) -> DeviceProfile:
    """Validate a profile document; raise ProfileError with every problem's field path."""
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(source, validation_issues(exc, data)) from exc


def load_profile(path: str | Path) -> DeviceProfile:
    """Load and validate one profile file."""
    path = Path(path)
    return parse_profile(load_yaml_mapping(path), path)


def builtin_profile_names() -> list[str]:
    """Names of the profiles shipped in ``device_profiles/profiles``."""
    folder = resources.files(__package__).joinpath(_PACKAGE_DIR)
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


@cache
def load_builtin_profile(name: str) -> DeviceProfile:
    """A shipped profile by name (e.g. ``smart_pole``)."""
    if name not in builtin_profile_names():
        known = ", ".join(builtin_profile_names())
        raise ProfileError(name, [f"no built-in profile '{name}' (known: {known})"])
    source = resources.files(__package__).joinpath(_PACKAGE_DIR, f"{name}.yaml")
    text = source.read_text(encoding="utf-8")
    profile = parse_profile(parse_yaml_mapping(text, f"{_PACKAGE_DIR}/{name}.yaml"), name)
    if profile.name != name:
        raise ProfileError(name, [f"name: file {name}.yaml declares name '{profile.name}'"])
    return profile


def is_profile_path(ref: str) -> bool:
    """Whether a profile reference names a YAML file (else a built-in profile)."""
    return ref.endswith((".yaml", ".yml")) or "/" in ref


def resolve_profile(ref: str, base_dir: Path | None = None) -> DeviceProfile:
    """A profile by reference: a built-in name, or a path to a YAML file."""
    if is_profile_path(ref):
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return load_profile(path)
    return load_builtin_profile(ref)


def profile_json_schema() -> str:
    """The JSON Schema of a profile document, for editors (YAML language servers)."""
    schema = DeviceProfile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://citypulse-iot.invalid/schemas/device-profile-v1.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
