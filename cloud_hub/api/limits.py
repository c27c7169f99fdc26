"""A cap on the size of request bodies: 413 ``application/problem+json`` beyond it.

Pure ASGI middleware (no buffering): a declared ``Content-Length`` over the limit is refused
before the body is read; a body without one (chunked) is counted as it streams in, and the
request fails with 413 as soon as it passes the limit.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_hub.api.problems import TITLES, problem

__all__ = ["MAX_BODY_BYTES", "BodySizeLimit"]

#: The default limit: 1 MiB.
MAX_BODY_BYTES = 1024 * 1024


class _TooLarge(HTTPException):
    """Raised from ``receive``: FastAPI re-raises HTTPExceptions of body parsing, so the
    app's problem handler answers; if it escapes, the middleware answers itself."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` (or the limit of the longest matching
    path prefix in ``per_path``, e.g. a larger one for a CSV upload) with 413."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_BODY_BYTES,
        per_path: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})

    def limit_for(self, path: str) -> int:
        matches = [prefix for prefix in self.per_path if path.startswith(prefix)]
        return self.per_path[max(matches, key=len)] if matches else self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await _refuse(limit, scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length; count the body instead
    return None


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    exc = _TooLarge(limit)
    response = problem(413, TITLES[413], str(exc.detail))
    response.headers["Connection"] = "close"  # the unread rest of the body is not drained
    await response(scope, receive, send)
