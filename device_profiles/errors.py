"""Errors raised while loading profiles and validating values against them.

ProfileError            a profile file or document is invalid (file, field path, reason)
CommandRejected         a command does not fit its device's profile (name, parameter, range)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

__all__ = ["CommandRejected", "ProfileError", "format_location", "validation_issues"]


def format_location(loc: Sequence[int | str]) -> str:
    """Render a pydantic error location as a dotted path: ``points.dimming.modbus.address``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(document)"


def validation_issues(exc: ValidationError, document: object = None) -> list[str]:
    """One line per problem: ``path: reason (got value)``.

    Given the validated ``document``, the tags pydantic adds to the locations of
    discriminated unions (``connection.modbus_tcp.port``) are dropped, so the path is the one
    written in the file (``connection.port``).
    """
    lines = []
    for err in exc.errors(include_url=False):
        parts = _document_path(err["loc"], document)
        msg = err["msg"]
        if err["type"] == "value_error":
            # our validators word their messages; document-level ones start with their path
            msg = msg.removeprefix("Value error, ")
            lines.append(f"{format_location(parts)}: {msg}" if parts else msg)
            continue
        got = ""
        if err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
            shown = repr(err.get("input"))
            got = f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        lines.append(f"{format_location(parts)}: {msg}{got}")
    return lines


def _document_path(loc: Sequence[int | str], document: object) -> list[int | str]:
    path: list[int | str] = []
    node = document
    for part in loc:
        if isinstance(part, str) and "[" in part and part.endswith("]"):
            continue  # validator tags such as "function-after[...]"
        if isinstance(node, dict):
            if part not in node and part in node.values():
                continue  # the tag of a discriminated union: the discriminator's value
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        path.append(part)
    return path


class ProfileError(ValueError):
    """A profile (or another strict YAML document) is invalid; ``issues`` lists each problem."""

    def __init__(self, source: str | Path, issues: Sequence[str]) -> None:
        self.source = str(source)
        self.issues = list(issues)
        super().__init__(f"{self.source}: " + "; ".join(self.issues))


class CommandRejected(ValueError):
    """A command or write does not fit the device profile. ``reason`` says precisely why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
