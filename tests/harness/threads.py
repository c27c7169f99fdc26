"""The session's last word on threads: a non-daemon thread still running when pytest is done
would keep the interpreter from exiting (it joins every such thread), and a CI job would then
sit idle until its time limit. Name them, with their stacks, and end the process anyway.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable

GRACE_S = 10.0


def stuck_threads() -> list[threading.Thread]:
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]


def describe(threads: list[threading.Thread]) -> str:
    frames = sys._current_frames()
    parts = []
    for thread in threads:
        frame = frames.get(thread.ident or -1)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "  <no frame>\n"
        parts.append(
            f"--- thread {thread.name!r} (ident {thread.ident}) target "
            f"{getattr(thread, '_target', None)!r}\n{stack}"
        )
    return "".join(parts)


def exit_past_stuck_threads(exitstatus: int, before_exit: Callable[[], None]) -> None:
    """Wait up to ``GRACE_S`` for non-daemon threads; if any remain, print them to stderr and
    leave with ``exitstatus`` (``before_exit`` runs first: it stops what atexit would)."""
    deadline = time.monotonic() + GRACE_S
    for thread in stuck_threads():
        thread.join(max(0.0, deadline - time.monotonic()))
    left = stuck_threads()
    if not left:
        return
    sys.stderr.write(
        f"\nWARNING: {len(left)} non-daemon thread(s) still running after the session; the "
        f"interpreter would wait for them forever. Ending the process with status "
        f"{exitstatus}.\n{describe(left)}"
    )
    sys.stderr.flush()
    sys.stdout.flush()
    before_exit()
    os._exit(exitstatus)
