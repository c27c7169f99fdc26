"""The lighting page: each strategy the person may see, its next 7 days as a timeline (local
times, sun events resolved, the lamp state each step leaves), its recent firings, and "apply
now" for those who may command. The figures come from the API's own routes (one set of rules):
:func:`~cloud_hub.api.routes_lighting.preview_strategy`, ``list_firings``, ``apply_now``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from cloud_hub.api.routes_lighting import (
    apply_now,
    create_strategy,
    list_firings,
    preview_strategy,
)
from cloud_hub.api.scope import selector_in_scope
from cloud_hub.console.auth import Forbidden, Person, Posted, hub_of
from cloud_hub.console.rendering import render
from cloud_hub.console.texts import translator
from cloud_hub.lighting.spec import StrategySpec
from device_profiles import CommandRejected

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
WEEK_H = 168
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@router.get("/lighting", response_class=HTMLResponse)
async def lighting_page(request: Request, person: Person) -> Response:
    hub = hub_of(request)
    t = translator(person.language)
    rows = [
        r
        for r in await hub.lighting.store.strategies()
        if selector_in_scope(person.principal, r.selector)
    ]
    strategies: list[dict[str, Any]] = []
    for row in rows:
        preview = await preview_strategy(row.strategy_id, hub, person.principal, WEEK_H)
        days: dict[str, list[Any]] = defaultdict(list)
        for firing in preview.firings:
            local = firing.at_local
            days[f"{local:%Y-%m-%d} {t(WEEKDAYS[local.weekday()])}"].append(firing)
        firings = await list_firings(row.strategy_id, hub, person.principal, 10)
        strategies.append(
            {"row": row, "preview": preview, "days": dict(days), "firings": firings.items}
        )
    return render(
        request,
        "lighting.html",
        person,
        active="lighting",
        strategies=strategies,
        error=request.query_params.get("error"),
        step_rows=range(STEP_ROWS),
    )


STEP_ROWS = 4


def _spec(form: dict[str, str]) -> StrategySpec:
    """A strategy from the form: its selector, place and up to STEP_ROWS steps (a step's level,
    if given, is its command's ``level``); pydantic's ValidationError names a bad field."""
    ids = [d.strip() for d in form.get("device_ids", "").split(",") if d.strip()]
    selector = {
        "site": form.get("site", "").strip() or None,
        "profile": form.get("profile", "").strip() or None,
        "device_ids": ids or None,
    }
    steps = []
    for i in range(STEP_ROWS):
        at = form.get(f"at_{i}", "").strip()
        if not at:
            continue
        level = form.get(f"level_{i}", "").strip()
        step: dict[str, Any] = {"at": at, "command": form.get(f"command_{i}", "").strip()}
        if level:
            step["params"] = {"level": int(level) if level.lstrip("-").isdigit() else level}
        steps.append(step)
    body: dict[str, Any] = {
        "name": form.get("name", "").strip(),
        "selector": {k: v for k, v in selector.items() if v is not None},
        "timezone": form.get("timezone", "").strip() or "Asia/Shanghai",
        "steps": steps,
    }
    for key in ("lat", "lon"):
        text = form.get(key, "").strip()
        if text:
            try:
                body[key] = float(text)
            except ValueError:
                body[key] = text  # refused by the model, naming the field
    return StrategySpec.model_validate(body)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])


@router.post("/lighting/strategies")
async def create(request: Request, person: Posted) -> Response:
    """Create a strategy from the form, checked as the API checks it, then show its week."""
    if not person.may("command"):
        raise Forbidden
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        spec = _spec(form)
        row = await create_strategy(spec, hub_of(request), person.principal, request)
    except ValidationError as exc:
        return RedirectResponse(f"/lighting?error={quote(_errors(exc))}", status_code=303)
    except (CommandRejected, HTTPException) as exc:
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return RedirectResponse(f"/lighting?error={quote(str(detail))}", status_code=303)
    return RedirectResponse(f"/lighting#strategy-{row.strategy_id}", status_code=303)


@router.post("/lighting/{strategy_id}/apply-now")
async def apply(request: Request, strategy_id: str, person: Posted) -> Response:
    if not person.may("command"):
        raise Forbidden
    try:
        await apply_now(strategy_id, hub_of(request), person.principal, request)
    except HTTPException as exc:
        if exc.status_code == 404:
            return render(request, "error.html", person, status_code=404, message="not_found")
        return RedirectResponse(f"/lighting?error={quote(str(exc.detail))}", status_code=303)
    return RedirectResponse(f"/lighting#strategy-{strategy_id}", status_code=303)
