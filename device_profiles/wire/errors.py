"""The wire contract's one error: a topic or payload that breaks the contract."""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(ValueError):
    """A message does not follow the wire contract; the message says where and why."""
