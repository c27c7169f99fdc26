"""Strict YAML reading: duplicate keys are errors and messages carry the line number."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from device_profiles.errors import ProfileError

__all__ = ["load_yaml_mapping", "parse_yaml_mapping"]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml_mapping(text: str, source: str | Path) -> dict[str, Any]:
    """Parse ``text`` as a YAML mapping; raise ProfileError naming ``source`` and the line."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ProfileError(source, [f"{where}: {exc.problem}"]) from exc
    except yaml.YAMLError as exc:
        raise ProfileError(source, [f"not valid YAML: {exc}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(source, [f"(document): expected a mapping, got {type(data).__name__}"])
    return data


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read ``path`` as a YAML mapping (see :func:`parse_yaml_mapping`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(path, [f"cannot read file: {exc.strerror}"]) from exc
    return parse_yaml_mapping(text, path)
