"""The agents page (each agent with its health report: CPU, memory, buffer, unconfirmed
batches, per-device errors; its remote configuration's state) and the provisioning tokens page
(create one with its site, lifetime and uses — its secret shown once —, list, revoke), for those
the API lets do so; the dead letters (refused messages with their reasons) with replay, for
admins. Paged and scoped like the API (:meth:`Registry.page_agents`, the
provisioning service with the person's site).
"""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from cloud_hub.api.routes_dead_letters import list_dead_letters, replay_dead_letter
from cloud_hub.console.auth import Forbidden, Person, Posted, hub_of
from cloud_hub.console.rendering import render
from cloud_hub.provisioning.tokens import ProvisioningError, ScopeViolation
from cloud_hub.registry import AgentConfigRow

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


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
    agents = [
        {"row": r, "health": hub.ingest.health.get(r.agent_id), "config": configs.get(r.agent_id)}
        for r in rows
    ]
    return render(
        request,
        "agents.html",
        person,
        active="agents",
        agents=agents,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
    )


@router.get("/provisioning", response_class=HTMLResponse)
async def tokens_page(request: Request, person: Person) -> Response:
    if not person.may("provision"):
        raise Forbidden
    tokens = await hub_of(request).provisioning.list_tokens(
        person.principal.site, include_inactive=True, limit=100
    )
    return render(request, "provisioning.html", person, active="provisioning", tokens=tokens)


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
    service = hub_of(request).provisioning
    error, issued = None, None
    try:
        issued = await service.create_token(
            person.principal.key_id,
            site=scope or chosen,
            ttl_s=ttl_h * 3600,
            max_uses=max_uses,
            note=note,
        )
    except ProvisioningError as exc:
        error = str(exc)
    tokens = await service.list_tokens(scope, include_inactive=True, limit=100)
    return render(
        request,
        "provisioning.html",
        person,
        status_code=400 if error else 201,
        active="provisioning",
        tokens=tokens,
        issued=issued,
        error=error,
    )


@router.post("/provisioning/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str, person: Posted) -> Response:
    if not person.may("provision"):
        raise Forbidden
    try:
        await hub_of(request).provisioning.revoke_token(
            person.principal.key_id, token_id, person.principal.site
        )
    except (ScopeViolation, ProvisioningError):
        return render(request, "error.html", person, status_code=404, message="not_found")
    return RedirectResponse("/provisioning", status_code=303)


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
        return render(request, "error.html", person, status_code=404, message="not_found")
    if isinstance(result, Response):  # a problem (409 not replayable, 503 not stored in time)
        detail = json.loads(bytes(result.body)).get("detail", "")
        return RedirectResponse(f"/dead-letters?outcome={quote(str(detail))}", status_code=303)
    text = f"{result.outcome}: {result.readings_stored} readings stored"
    if result.reasons:
        text += " — " + "; ".join(result.reasons[:3])
    return RedirectResponse(f"/dead-letters?outcome={quote(text)}", status_code=303)
