"""Numbers that arrive from outside (JSON bodies, text payloads, command parameters).

``math.isfinite`` converts its argument to a float first, so for an integer beyond the float
range (a 400-digit JSON number) it raises ``OverflowError`` instead of answering. Every check
of a number from the wire goes through :func:`is_finite`, which never raises.
"""

from __future__ import annotations

import math

__all__ = ["is_finite"]


def is_finite(value: int | float) -> bool:
    """True for every integer, however large, and for floats that are neither inf nor NaN."""
    return isinstance(value, int) or math.isfinite(value)
