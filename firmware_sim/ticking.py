"""Advance a simulator's physics on a timer for as long as a block runs.

::

    async with server, ticking(model.run, tick_s, name="smart_pole tick"):
        yield sim

``tick_s=None`` starts nothing: the values stay still until the caller steps the model (what
tests want). The task is cancelled, and awaited, when the block exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

__all__ = ["ticking"]


@asynccontextmanager
async def ticking(
    run: Callable[[float], Coroutine[Any, Any, None]], tick_s: float | None, *, name: str
) -> AsyncIterator[None]:
    """Run ``run(tick_s)`` in a task called ``name`` until the block exits (none if ``tick_s``
    is None)."""
    if tick_s is None:
        yield
        return
    ticker = asyncio.create_task(run(tick_s), name=name)
    try:
        yield
    finally:
        ticker.cancel()
        await asyncio.wait([ticker])
