"""The FastAPI application. Everything is built in ``create_app`` and owned by the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import structlog
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.docs_pages import install_docs_pages
from cloud_hub.api.limits import BodySizeLimit
from cloud_hub.api.problems import (
    document_problems,
    install_problem_handlers,
    problem,
    problem_responses,
)
from cloud_hub.api.routes import router
from cloud_hub.api.routes_alarms import router as alarms_router
from cloud_hub.api.routes_command_groups import router as command_groups_router
from cloud_hub.api.routes_dead_letters import router as dead_letters_router
from cloud_hub.api.routes_events import router as events_router
from cloud_hub.api.routes_lighting import router as lighting_router
from cloud_hub.api.routes_provisioning import MAX_CSV_BYTES, document_token_lifetime
from cloud_hub.api.routes_provisioning import router as provisioning_router
from cloud_hub.api.routes_telemetry import router as telemetry_router
from cloud_hub.api.routes_users import router as users_router
from cloud_hub.api.routes_webhooks import router as webhooks_router
from cloud_hub.api.scope import unscoped_only
from cloud_hub.coap.ingress import CoapIngress
from cloud_hub.console.pages import install_console
from cloud_hub.hub import Hub
from cloud_hub.metrics import CONTENT_TYPE, render_metrics
from cloud_hub.settings import HubSettings
from cloud_hub.sites import SiteDirectory

__all__ = ["create_app"]

log = structlog.get_logger(__name__)

#: how long the hub's tasks may take to stop before the hub is closed anyway
STOP_TIMEOUT_S = 10.0


def create_app(settings: HubSettings, hub: Hub | None = None) -> FastAPI:
    """The hub's HTTP API. Its lifespan starts the hub (registry, store, MQTT) and stops it."""
    the_hub = hub if hub is not None else Hub(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_hub.start()
        task = asyncio.create_task(the_hub.run(), name="hub")
        app.state.hub = the_hub
        app.state.sites = SiteDirectory(the_hub.registry)  # the event stream's site filter
        ingress = CoapIngress(the_hub, settings.coap) if settings.coap.enabled else None
        if ingress is not None:
            await ingress.start()  # NB-IoT devices' uplinks, into the same ingest path
        app.state.coap = ingress
        try:
            yield
        finally:
            if ingress is not None:
                await ingress.stop()
            task.cancel()
            # bounded: a task below that swallowed its cancellation (asyncio.wait_for on
            # Python 3.11) must not keep the process from stopping
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if done:
                with contextlib.suppress(asyncio.CancelledError):
                    task.result()
            else:
                stuck = sorted(
                    t.get_name()
                    for t in asyncio.all_tasks()
                    if not t.done() and t is not asyncio.current_task()
                )
                log.error("hub tasks did not stop in time; closing anyway", tasks=stuck[:20])
            await the_hub.close()

    app = FastAPI(
        title="City IoT hub",
        version="1",
        summary="Devices, telemetry and commands of the county's smart poles, gateways and monitors.",
        lifespan=lifespan,
        docs_url=None,  # served from the package instead of a CDN (docs_pages)
        redoc_url=None,
    )
    install_docs_pages(app)
    install_console(app, the_hub)  # the operators' pages, at /
    install_problem_handlers(app)
    # the bulk CSV: as the API takes it, and as the console's form uploads it (multipart framing)
    app.add_middleware(
        BodySizeLimit,
        per_path={
            "/api/v1/provisioning/bulk": MAX_CSV_BYTES,
            "/provisioning/bulk": MAX_CSV_BYTES + 64 * 1024,
        },
    )
    app.include_router(router)
    app.include_router(telemetry_router)
    app.include_router(command_groups_router)
    app.include_router(provisioning_router)
    app.include_router(alarms_router)
    app.include_router(events_router)
    app.include_router(webhooks_router)
    app.include_router(dead_letters_router)
    app.include_router(lighting_router)
    app.include_router(users_router)
    document_problems(app)
    document_token_lifetime(app, settings.provisioning.max_token_ttl_s)

    _install_health(app, the_hub)
    return app


def _install_health(app: FastAPI, the_hub: Hub) -> None:
    """Liveness, readiness and the Prometheus metrics."""

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str | bool]:
        """The process is alive; ``leader``: it runs the alarms, webhooks and command sweep."""
        return {"status": "ok", "leader": the_hub.is_leader}

    @app.get("/readyz", tags=["health"], responses=problem_responses(503, s503="Not ready"))
    async def readyz() -> JSONResponse:
        """Ready when both MQTT sessions are up and the telemetry store takes writes (while it
        does not, readings are kept in the hub's disk spool); ``leader`` as in ``/healthz``."""
        if not (the_hub.connected.is_set() and the_hub.telemetry_connected.is_set()):
            return problem(503, "Not ready", "not connected to the MQTT broker")
        if not the_hub.store_ready:
            return problem(
                503, "Not ready", "the telemetry store is unavailable; readings are spooled"
            )
        return JSONResponse({"status": "ready", "leader": the_hub.is_leader})

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses=problem_responses(401, 403),
    )
    async def metrics(caller: Annotated[Principal, Depends(require("read"))]) -> Response:
        """Prometheus metrics: ingest rate, write latency, dead letters, agents, commands
        (the whole hub's: not for site-scoped keys)."""
        unscoped_only(caller, "the hub's metrics")
        return Response(await render_metrics(the_hub), media_type=CONTENT_TYPE)
