"""Stopping tasks for sure: a cancellation requested is never lost, and a stop has a bound.

On Python 3.11, ``asyncio.wait_for`` returns the result instead of raising when the awaited
future completes in the same loop iteration as a ``cancel()`` (fixed in 3.12). Libraries we
await use it (aiomqtt's ``publish`` waits for the PUBACK with it, pymodbus for the answer), so
under load (readings every millisecond, acknowledgements arriving all the time) a task may
swallow the one cancellation of a stop and carry on for ever: the agent then never exits.

Two defences, used by the agent's long-running loops and by its stop:

* :func:`raise_if_cancelling`, at the top of every iteration of a loop that awaits third-party
  code: a task whose cancellation was requested (``Task.cancelling()``) but swallowed below it
  raises ``CancelledError`` there, so the request is honoured one iteration late.
* :func:`cancel_within`: cancel tasks, and cancel again those still running after
  ``recancel_s`` (a swallowed cancellation gets another), until all are done or the time is
  up; returns the tasks that did not finish, for the caller to report (:func:`describe`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["cancel_within", "describe", "raise_if_cancelling"]

RECANCEL_S = 1.0  # long enough for a task's own clean-up (a goodbye message) to finish


def raise_if_cancelling() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop and has not yet."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_within(
    tasks: Iterable[asyncio.Task[object]], timeout_s: float, *, recancel_s: float = RECANCEL_S
) -> set[asyncio.Task[object]]:
    """Cancel ``tasks`` and wait at most ``timeout_s`` for them; the ones still running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(recancel_s, remaining))
    return pending


def describe(task: asyncio.Task[object]) -> str:
    """A task's name and where it waits: ``uplink at edge_agent/uplink.py:89 in run``."""
    frames = task.get_stack(limit=1)
    if not frames:
        return task.get_name()
    code = frames[-1].f_code
    return f"{task.get_name()} at {code.co_filename}:{frames[-1].f_lineno} in {code.co_name}"
