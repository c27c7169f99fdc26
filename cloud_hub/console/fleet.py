"""The agents: the list (each agent with its health report and its remote configuration's
state) and one agent's page (its state since when, its health figures with units, the devices
behind it, its active alarms, its remote configuration — viewed, edited by admins, applied or
rejected by the agent —, and its revocation); the provisioning page (create a claim token with
its site, lifetime and uses — its secret shown once —, or a batch of them from a CSV upload;
list, revoke), for those the API lets do so; the dead letters (refused messages with their
reasons) with replay, for admins.

Every action calls the API's own route function (``get_agent``, ``get_config``,
``push_config``, ``revoke_agent``, ``bulk_provision``, the dead letters' list and replay): one
copy of the scope checks (404 outside the person's site), the rules and the audit entry (as
``user:<name>``). Lists are paged and scoped like the API's (:meth:`Registry.page_agents`, the
provisioning service with the person's site).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.types import Message

from cloud_hub.alarms import AlarmRow
from cloud_hub.api.routes import AgentConfigIn, get_agent, get_config, push_config
from cloud_hub.api.routes_dead_letters import list_dead_letters, replay_dead_letter
from cloud_hub.api.routes_provisioning import MAX_CSV_BYTES, bulk_provision, revoke_agent
from cloud_hub.api.scope import current_sites, in_scope, sees_object
from cloud_hub.console.auth import Forbidden, Person, Posted, Viewer, hub_of
from cloud_hub.console.rendering import render
from cloud_hub.console.texts import translator
from cloud_hub.provisioning.models import AgentCredentialRow
from cloud_hub.provisioning.tokens import ProvisioningError, ScopeViolation
from cloud_hub.registry import AgentConfigRow, DeviceRow
from device_profiles.wire import AgentHealth, DeviceHealth

__all__ = ["CpuUse", "DeviceLine", "cpu_use", "router"]

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
MIB = 1024 * 1024
#: the largest CSV upload: the API's bulk limit (the app lets the console's form carry it)
UPLOAD_BYTES = MAX_CSV_BYTES
#: the active alarms an agent's page lists at most
AGENT_ALARMS = 50


@dataclass(frozen=True)
class CpuUse:
    """How busy an agent's process is, as a share of one core: over ``over_s`` seconds
    between two of its health reports, or (``over_s`` None) its mean since it started."""

    share: float | None
    over_s: float | None


#: app.state attribute: agent id -> (the latest health report seen, the one seen before it)
_SEEN = "console_health_seen"


def cpu_use(request: Request, health: AgentHealth) -> CpuUse:
    """The agent's CPU use between the two latest of its reports this console has seen (the
    hub keeps only the latest: the first page view after a start shows the mean since the
    agent started, ``cpu_seconds / uptime_s``)."""
    seen: dict[str, tuple[AgentHealth, AgentHealth | None]] = getattr(request.app.state, _SEEN, {})
    setattr(request.app.state, _SEEN, seen)
    latest, before = seen.get(health.agent_id, (None, None))
    if latest is None or health.ts > latest.ts:
        restarted = latest is not None and health.uptime_s < latest.uptime_s
        latest, before = health, (None if restarted else latest)
        seen[health.agent_id] = (latest, before)
    if before is not None and latest.ts > before.ts:
        over_s = (latest.ts - before.ts) / 1000
        return CpuUse(max(0.0, latest.cpu_seconds - before.cpu_seconds) / over_s, over_s)
    return CpuUse(health.cpu_seconds / health.uptime_s if health.uptime_s > 0 else None, None)


@dataclass(frozen=True)
class DeviceLine:
    """A device behind an agent (the registry's row) with its polling figures from the
    agent's latest health report, if it had any."""

    row: DeviceRow
    health: DeviceHealth | None

    @property
    def error_rate(self) -> float | None:
        """Failed polls among all polls (``polls`` counts the successful ones)."""
        if self.health is None:
            return None
        tries = self.health.polls + self.health.errors
        return self.health.errors / tries if tries else None


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    if whole < 172800:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _problem_detail(response: Response) -> str:
    return str(json.loads(bytes(response.body)).get("detail", ""))


def _not_found(request: Request, person: Viewer) -> Response:
    return render(request, "error.html", person, status_code=404, message="not_found")


@router.get("/agents", response_class=HTMLResponse)
async def agents_page(
    request: Request, person: Person, offset: Annotated[int, Query(ge=0)] = 0
) -> Response:
    hub = hub_of(request)
    rows, total = await hub.registry.page_agents(person.principal.site, PAGE_SIZE, offset)
    ids = [r.agent_id for r in rows]
    async with hub.registry.session() as db:
        configs = {
            c.agent_id: c
            for c in (
                await db.scalars(select(AgentConfigRow).where(AgentConfigRow.agent_id.in_(ids)))
            ).all()
        }
    agents = []
    for r in rows:
        health = hub.ingest.health.get(r.agent_id)
        cpu = cpu_use(request, health) if health is not None else None
        agents.append({"row": r, "health": health, "cpu": cpu, "config": configs.get(r.agent_id)})
    return render(
        request,
        "agents.html",
        person,
        active="agents",
        agents=agents,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        mib=MIB,
    )


# -- one agent ----------------------------------------------------------------------------


async def _agent_page(
    request: Request,
    person: Viewer,
    agent_id: str,
    *,
    status_code: int = 200,
    typed: str | None = None,
    config_error: str | None = None,
    revoke_error: str | None = None,
) -> Response:
    hub = hub_of(request)
    principal = person.principal
    try:  # the API's own route: 404 for an unknown agent or one outside the person's site
        agent = await get_agent(agent_id, hub, principal)
    except HTTPException:
        return _not_found(request, person)
    try:
        config = await get_config(agent_id, hub, principal)
    except HTTPException:  # none pushed yet
        config = None
    async with hub.registry.session() as db:
        devices = (
            await db.scalars(
                select(DeviceRow)
                .where(DeviceRow.agent_id == agent_id)
                .order_by(DeviceRow.device_id)
            )
        ).all()
        alarms = (
            await db.scalars(
                select(AlarmRow)
                .where(AlarmRow.agent_id == agent_id, AlarmRow.state == "active")
                .order_by(AlarmRow.raised_at.desc())
                .limit(AGENT_ALARMS)
            )
        ).all()
        config_row = await db.get(AgentConfigRow, agent_id)
        credential = await db.get(AgentCredentialRow, agent_id)
    if principal.site is not None:  # an agent may serve several sites: only the person's
        sites = await current_sites(hub)
        alarms = [a for a in alarms if sees_object(principal, sites, a.device_id, a.agent_id)]
    health = hub.ingest.health.get(agent_id)
    reported = {} if health is None else health.devices
    lines = [DeviceLine(d, reported.get(d.device_id)) for d in devices if in_scope(principal, d)]
    if typed is None and config is not None:
        typed = json.dumps(config.desired, indent=2, ensure_ascii=False)
    return render(
        request,
        "agent.html",
        person,
        status_code=status_code,
        active="agents",
        agent=agent,
        health=health,
        cpu=cpu_use(request, health) if health is not None else None,
        uptime=_duration(health.uptime_s) if health is not None else None,
        health_at=datetime.fromtimestamp(health.ts / 1000, UTC) if health is not None else None,
        devices=lines,
        alarms=alarms,
        config=config,
        config_json=json.dumps(config.desired, indent=2, ensure_ascii=False) if config else "",
        reported_at=config_row.reported_at if config_row is not None else None,
        typed=typed or "",
        config_error=config_error,
        credential=credential,
        revoke_error=revoke_error,
        mib=MIB,
    )


@router.get("/agents/{agent_id}", response_class=HTMLResponse)
async def agent_page(request: Request, agent_id: str, person: Person) -> Response:
    return await _agent_page(request, person, agent_id)


@router.post("/agents/{agent_id}/config", response_class=HTMLResponse)
async def push_agent_config(
    request: Request, agent_id: str, person: Posted, config: Annotated[str, Form()] = ""
) -> Response:
    """A new version of the agent's remote configuration, from the JSON typed in the form
    (the API's PUT route: admins, the scope check, the audit); refused with the precise
    reason and the typed text kept."""
    if not person.may("admin"):
        raise Forbidden
    t = translator(person.language)
    error = None
    try:
        body = AgentConfigIn(config=json.loads(config))
    except json.JSONDecodeError as exc:
        error = t("agent_config_json") % (exc.lineno, exc.colno, exc.msg)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        error = t("agent_config_refused") % problems
    if error is not None:
        return await _agent_page(
            request, person, agent_id, status_code=400, typed=config, config_error=error
        )
    try:
        await push_config(agent_id, body, hub_of(request), person.principal, request)
    except HTTPException:  # not in the person's site, or no such agent
        return _not_found(request, person)
    return RedirectResponse(f"/agents/{quote(agent_id)}#config", status_code=303)


@router.post("/agents/{agent_id}/revoke", response_class=HTMLResponse)
async def revoke(
    request: Request, agent_id: str, person: Posted, understood: Annotated[str, Form()] = ""
) -> Response:
    """Disable the agent's broker credentials and disconnect it (the API's revoke route:
    admins, the scope check, the audit), once the person ticked that they understand."""
    if not person.may("admin"):
        raise Forbidden
    if understood != "yes":
        message = translator(person.language)("agent_revoke_confirm")
        return await _agent_page(request, person, agent_id, status_code=400, revoke_error=message)
    hub = hub_of(request)
    try:
        result = await revoke_agent(agent_id, person.principal, hub.provisioning, hub)
    except HTTPException:  # not in the person's site
        return _not_found(request, person)
    if isinstance(result, JSONResponse):  # no credentials of its own; the broker failed
        return await _agent_page(
            request,
            person,
            agent_id,
            status_code=result.status_code,
            revoke_error=_problem_detail(result),
        )
    return RedirectResponse(f"/agents/{quote(agent_id)}#revocation", status_code=303)


# -- provisioning -------------------------------------------------------------------------


async def _provisioning_page(
    request: Request, person: Viewer, status_code: int = 200, **context: Any
) -> Response:
    service = hub_of(request).provisioning
    tokens = await service.list_tokens(person.principal.site, include_inactive=True, limit=100)
    return render(
        request,
        "provisioning.html",
        person,
        status_code=status_code,
        active="provisioning",
        tokens=tokens,
        max_upload_bytes=UPLOAD_BYTES,
        default_ttl_h=service.settings.token_ttl_s / 3600,
        **context,
    )


@router.get("/provisioning", response_class=HTMLResponse)
async def tokens_page(request: Request, person: Person) -> Response:
    if not person.may("provision"):
        raise Forbidden
    return await _provisioning_page(request, person)


@router.post("/provisioning/tokens", response_class=HTMLResponse)
async def create_token(
    request: Request,
    person: Posted,
    site: Annotated[str, Form()] = "",
    ttl_h: Annotated[float, Form(gt=0, le=24 * 30)] = 24.0,
    max_uses: Annotated[int, Form(ge=1, le=1000)] = 1,
    note: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if not person.may("provision"):
        raise Forbidden
    scope = person.principal.site
    chosen = site.strip() or None
    if scope is not None and chosen not in (None, scope):
        raise Forbidden
    error, issued = None, None
    try:
        issued = await hub_of(request).provisioning.create_token(
            person.principal.key_id,
            site=scope or chosen,
            ttl_s=ttl_h * 3600,
            max_uses=max_uses,
            note=note,
        )
    except ProvisioningError as exc:
        error = str(exc)
    return await _provisioning_page(
        request, person, 400 if error else 201, issued=issued, error=error
    )


def _carrying(request: Request, body: bytes) -> Request:
    """A request like ``request`` whose body is ``body`` as text/csv: what the API's bulk
    route reads (it takes the CSV as its raw body, not as a form)."""

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"text/csv"), (b"content-length", str(len(body)).encode())]
    return Request({**request.scope, "headers": headers}, receive)


@router.post("/provisioning/bulk", response_class=HTMLResponse)
async def bulk_upload(
    request: Request,
    person: Posted,
    csv: Annotated[UploadFile, File()],
    ttl_h: Annotated[float | None, Form(gt=0)] = None,
) -> Response:
    """One single-use token per agent of the uploaded CSV (the API's bulk route: its size
    limit, its site scope, its row checks); the secrets are shown this once."""
    if not person.may("provision"):
        raise Forbidden
    raw = await csv.read(MAX_CSV_BYTES + 1)  # the route refuses more, with its reason
    hub = hub_of(request)
    ttl_s = ttl_h * 3600 if ttl_h is not None else None
    try:
        result = await bulk_provision(
            _carrying(request, raw), person.principal, hub.provisioning, ttl_s
        )
    except HTTPException as exc:  # a technician without a site may not provision
        return await _provisioning_page(
            request, person, exc.status_code, bulk_error=str(exc.detail)
        )
    if isinstance(result, JSONResponse):  # a bad row, a conflict, too large
        return await _provisioning_page(
            request, person, result.status_code, bulk_error=_problem_detail(result)
        )
    return await _provisioning_page(request, person, 201, bulk_issued=result)


@router.post("/provisioning/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str, person: Posted) -> Response:
    if not person.may("provision"):
        raise Forbidden
    try:
        await hub_of(request).provisioning.revoke_token(
            person.principal.key_id, token_id, person.principal.site
        )
    except (ScopeViolation, ProvisioningError):
        return _not_found(request, person)
    return RedirectResponse("/provisioning", status_code=303)


# -- dead letters -------------------------------------------------------------------------


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters_page(
    request: Request, person: Person, cursor: str | None = None
) -> Response:
    """Refused messages with their reasons, newest first, and replay (admins, as the API)."""
    if not person.may("admin"):
        raise Forbidden
    page = await list_dead_letters(
        hub_of(request), person.principal, None, None, None, None, PAGE_SIZE, cursor
    )
    return render(
        request,
        "dead_letters.html",
        person,
        active="dead_letters",
        letters=page.items,
        next_cursor=page.next_cursor,
        outcome=request.query_params.get("outcome"),
    )


@router.post("/dead-letters/{dead_letter_id}/replay")
async def replay(request: Request, dead_letter_id: int, person: Posted) -> Response:
    if not person.may("admin"):
        raise Forbidden
    try:
        result = await replay_dead_letter(
            dead_letter_id, hub_of(request), person.principal, request
        )
    except HTTPException:
        return _not_found(request, person)
    if isinstance(result, Response):  # a problem (409 not replayable, 503 not stored in time)
        return RedirectResponse(
            f"/dead-letters?outcome={quote(_problem_detail(result))}", status_code=303
        )
    text = f"{result.outcome}: {result.readings_stored} readings stored"
    if result.reasons:
        text += " — " + "; ".join(result.reasons[:3])
    return RedirectResponse(f"/dead-letters?outcome={quote(text)}", status_code=303)
