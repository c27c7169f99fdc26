"""Running the hub: uvicorn serving the API, whose lifespan runs the MQTT side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

from cloud_hub.api.app import create_app
from cloud_hub.settings import HubSettings

__all__ = ["serve"]


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the caller owns signals (Ctrl-C cancels serve())."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(settings: HubSettings, started: asyncio.Event | None = None) -> None:
    """Serve until cancelled; set ``started`` once the API accepts connections."""
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,  # our structlog set-up formats uvicorn's records too
        access_log=False,
        lifespan="on",
        # forwarded headers only from the configured proxies (uvicorn's default trusts
        # 127.0.0.1 and the FORWARDED_ALLOW_IPS variable): none by default
        proxy_headers=bool(settings.api.trusted_proxies),
        forwarded_allow_ips=list(settings.api.trusted_proxies),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        while not server.started:
            if task.done():
                await task  # re-raise why it stopped
                raise RuntimeError("the hub's HTTP server stopped during start-up")
            await asyncio.sleep(0.02)
        if started is not None:
            started.set()
        # shielded: cancelling serve() asks uvicorn to shut down (closing its sockets and
        # running the lifespan's clean-up) instead of killing it mid-flight
        await asyncio.shield(task)
    finally:
        server.should_exit = True
        if not task.done():
            await asyncio.wait({task}, timeout=10)
