"""A queue of published items (URCs, modem events) for one consumer, ended by its publisher."""

from __future__ import annotations

import asyncio
import copy as copy_module
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, Self, TypeVar

__all__ = ["Subscription", "fresh"]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


def fresh(error: E) -> E:
    """A new instance of ``error`` (same type, message and cause), to raise a stored error more
    than once without piling tracebacks onto one instance."""
    copy = copy_module.copy(error)
    copy.__traceback__ = None
    copy.__cause__ = error.__cause__
    return copy


class Subscription(Generic[T]):
    """A queue of items (URCs, modem events) for one consumer: ``async for item in sub``.

    Created registered, so nothing published after creation is missed. A full queue drops its
    oldest item (counted in ``dropped``). When the publisher ends, iteration stops; if it ended
    with an error (the modem is gone) :meth:`get` and iteration raise that error.
    """

    def __init__(
        self, maxsize: int = 1000, on_close: Callable[[Subscription[T]], None] | None = None
    ) -> None:
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._wakeup = asyncio.Event()
        self._end: BaseException | None = None
        self._ended = False
        self._on_close = on_close
        self.dropped = 0

    def publish(self, item: T) -> None:
        """Queue ``item`` (publisher side)."""
        if self._ended:
            return
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wakeup.set()

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream (publisher side): consumers drain it, then stop or get ``error``."""
        if not self._ended:
            self._ended, self._end = True, error
            self._wakeup.set()

    def get_nowait(self) -> T | None:
        """The next queued item, or None if none is queued."""
        return self._items.popleft() if self._items else None

    async def get(self, timeout_s: float | None = None) -> T:
        """The next item; TimeoutError after ``timeout_s``; StopAsyncIteration or the end error
        once the stream has ended and is drained."""
        async with asyncio.timeout(timeout_s):
            while not self._items:
                if self._ended:
                    if self._end is not None:
                        raise fresh(self._end)
                    raise StopAsyncIteration
                self._wakeup.clear()
                await self._wakeup.wait()
        return self._items.popleft()

    def close(self) -> None:
        """Stop receiving (consumer side)."""
        self.finish()
        self._items.clear()
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await self.get()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
