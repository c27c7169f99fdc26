"""The lighting pages: each strategy the person may see, its next 7 days as a timeline (local
times, sun events resolved, the lamp state each step leaves), its firings (each with the
command group it sent), and, for those who may command, creating, editing, disabling or
enabling, deleting (after a confirmation) and "apply now".

Everything goes through the API's own route functions (one set of rules, one scope check, one
audit): :func:`~cloud_hub.api.routes_lighting.list_strategies`, ``get_strategy``,
``preview_strategy``, ``list_firings``, ``create_strategy``, ``replace_strategy`` (an edit,
and disabling or enabling: the same strategy with ``enabled`` flipped), ``delete_strategy``
and ``apply_now``. A strategy outside the person's site does not exist for them (404).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from cloud_hub.api.routes_lighting import (
    StrategyOut,
    apply_now,
    create_strategy,
    delete_strategy,
    get_strategy,
    list_firings,
    list_strategies,
    preview_strategy,
    replace_strategy,
)
from cloud_hub.console.auth import Forbidden, Person, Posted, Viewer, hub_of
from cloud_hub.console.rendering import render
from cloud_hub.console.texts import translator
from cloud_hub.hub import Hub
from cloud_hub.lighting.spec import WEEKDAYS, StrategySpec
from device_profiles import CommandRejected

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
WEEK_H = 168
#: step rows of a new strategy's form (an edit shows one more than the strategy has steps)
STEP_ROWS = 4
#: steps a strategy may have (StrategySpec's limit)
MAX_STEPS = 24
#: firings shown per strategy on the list, and on a strategy's own page
LIST_FIRINGS = 10
PAGE_FIRINGS = 100
#: a new strategy's form before anything is typed
NEW_VALUES: dict[str, str] = {"timezone": "Asia/Shanghai"} | {f"day_{d}": "on" for d in WEEKDAYS}


async def _shown(hub: Hub, person: Viewer, strategy: StrategyOut, firings: int) -> dict[str, Any]:
    """What the page shows of one strategy: its week ahead (none when disabled: nothing will
    fire), its latest firings, and its edit form's values (None: the form cannot show it)."""
    t = translator(person.language)
    days: dict[str, list[Any]] = defaultdict(list)
    if strategy.enabled:
        preview = await preview_strategy(strategy.strategy_id, hub, person.principal, WEEK_H)
        for firing in preview.firings:
            local = firing.at_local
            days[f"{local:%Y-%m-%d} {t(WEEKDAYS[local.weekday()])}"].append(firing)
    history = await list_firings(strategy.strategy_id, hub, person.principal, firings)
    return {
        "row": strategy,
        "days": dict(days),
        "firings": history.items,
        "form": _values_of(strategy),
    }


def _values_of(strategy: StrategyOut) -> dict[str, str] | None:
    """The edit form's fields for a strategy; None when a step carries parameters other than
    a whole ``level`` (the form would lose them: such a strategy is edited through the API)."""
    values = {
        "name": strategy.name,
        "site": str(strategy.selector.get("site") or ""),
        "profile": str(strategy.selector.get("profile") or ""),
        "device_ids": ", ".join(strategy.selector.get("device_ids") or ()),
        "tags": ", ".join(f"{k}={v}" for k, v in (strategy.selector.get("tags") or {}).items()),
        "timezone": strategy.timezone,
        "lat": "" if strategy.lat is None else str(strategy.lat),
        "lon": "" if strategy.lon is None else str(strategy.lon),
    }
    for i, step in enumerate(strategy.steps):
        level = step.params.get("level")
        if set(step.params) - {"level"} or not isinstance(level, int | None):
            return None
        values |= {f"at_{i}": step.at, f"command_{i}": step.command}
        values[f"level_{i}"] = "" if level is None else str(level)
    return values | {f"day_{d}": "on" for d in strategy.weekdays}


def _rows(values: dict[str, str]) -> range:
    """The step rows a form shows: at least STEP_ROWS, and one free row after the last step."""
    used = [i for i in range(MAX_STEPS) if values.get(f"at_{i}", "").strip()]
    return range(max(STEP_ROWS, min(MAX_STEPS, (used[-1] + 2) if used else 0)))


async def _list_page(
    request: Request,
    person: Viewer,
    status_code: int = 200,
    new_values: dict[str, str] | None = None,
    error: str | None = None,
) -> Response:
    hub = hub_of(request)
    strategies = [
        await _shown(hub, person, s, LIST_FIRINGS)
        for s in await list_strategies(hub, person.principal)
    ]
    values = new_values if new_values is not None else NEW_VALUES
    return render(
        request,
        "lighting.html",
        person,
        status_code=status_code,
        active="lighting",
        strategies=strategies,
        single=False,
        error=error or request.query_params.get("error"),
        done=request.query_params.get("done"),
        new_values=values,
        new_open=new_values is not None or not strategies,
        new_rows=_rows(values),
    )


async def _strategy_page(
    request: Request,
    person: Viewer,
    strategy_id: str,
    status_code: int = 200,
    edit_values: dict[str, str] | None = None,
    error: str | None = None,
) -> Response:
    hub = hub_of(request)
    try:
        strategy = await get_strategy(strategy_id, hub, person.principal)
    except HTTPException:  # none such, or outside the person's site
        return render(request, "error.html", person, status_code=404, message="not_found")
    shown = await _shown(hub, person, strategy, PAGE_FIRINGS)
    values = edit_values if edit_values is not None else shown["form"]
    return render(
        request,
        "lighting.html",
        person,
        status_code=status_code,
        active="lighting",
        strategies=[shown],
        single=True,
        error=error or request.query_params.get("error"),
        done=request.query_params.get("done"),
        edit_values=values,
        edit_open=edit_values is not None,
        edit_rows=_rows(values or {}),
    )


@router.get("/lighting", response_class=HTMLResponse)
async def lighting_page(request: Request, person: Person) -> Response:
    return await _list_page(request, person)


@router.get("/lighting/{strategy_id}", response_class=HTMLResponse)
async def strategy_page(request: Request, strategy_id: str, person: Person) -> Response:
    """One strategy: its week, its whole firing history, and its edit form."""
    return await _strategy_page(request, person, strategy_id)


def _tags(text: str) -> dict[str, str] | None:
    """``"road=G205, kind=lamp"`` as tags; ValueError naming an item without ``=``."""
    tags: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tags: '{item}' is not key=value")
        tags[key.strip()] = value.strip()
    return tags or None


def _spec(form: dict[str, str]) -> StrategySpec:
    """A strategy from the form: its selector, place, days and steps (a step's level, if
    given, is its command's ``level``); pydantic's ValidationError names a bad field (and a
    ValueError a bad tag)."""
    ids = [d.strip() for d in form.get("device_ids", "").split(",") if d.strip()]
    selector = {
        "site": form.get("site", "").strip() or None,
        "profile": form.get("profile", "").strip() or None,
        "device_ids": ids or None,
        "tags": _tags(form.get("tags", "")),
    }
    steps = []
    for i in range(MAX_STEPS):
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
    if form.get("weekdays_shown"):  # the form's day boxes (none ticked: refused, not "every")
        body["weekdays"] = [d for d in WEEKDAYS if form.get(f"day_{d}")]
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


def _refusal(exc: Exception) -> str:
    """Why the API refused a strategy, as it says it."""
    if isinstance(exc, ValidationError):
        return _errors(exc)
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return str(exc)


async def _form(request: Request) -> dict[str, str]:
    return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}


@router.post("/lighting/strategies")
async def create(request: Request, person: Posted) -> Response:
    """Create a strategy from the form, checked as the API checks it, then show its week; a
    refusal shows the API's reason with the typed values kept."""
    if not person.may("command"):
        raise Forbidden
    form = await _form(request)
    try:
        spec = _spec(form)
        row = await create_strategy(spec, hub_of(request), person.principal, request)
    except (ValueError, CommandRejected, HTTPException) as exc:  # ValidationError included
        return await _list_page(request, person, 400, new_values=form, error=_refusal(exc))
    return RedirectResponse(f"/lighting#strategy-{row.strategy_id}", status_code=303)


@router.post("/lighting/{strategy_id}/edit")
async def edit(request: Request, strategy_id: str, person: Posted) -> Response:
    """Replace a strategy with the form's (its enabled state kept), through the API's update
    route; a refusal shows the API's reason with the typed values kept."""
    if not person.may("command"):
        raise Forbidden
    hub = hub_of(request)
    form = await _form(request)
    try:
        current = await get_strategy(strategy_id, hub, person.principal)
    except HTTPException:
        return render(request, "error.html", person, status_code=404, message="not_found")
    try:
        spec = _spec(form).model_copy(update={"enabled": current.enabled})
        await replace_strategy(strategy_id, spec, hub, person.principal, request)
    except (ValueError, CommandRejected, HTTPException) as exc:
        return await _strategy_page(
            request, person, strategy_id, 400, edit_values=form, error=_refusal(exc)
        )
    return RedirectResponse(f"/lighting/{strategy_id}?done=saved", status_code=303)


def _spec_of(strategy: StrategyOut) -> StrategySpec:
    return StrategySpec.model_validate(
        {
            "name": strategy.name,
            "selector": strategy.selector,
            "timezone": strategy.timezone,
            "lat": strategy.lat,
            "lon": strategy.lon,
            "steps": [step.model_dump() for step in strategy.steps],
            "weekdays": strategy.weekdays,
            "enabled": strategy.enabled,
        }
    )


@router.post("/lighting/{strategy_id}/enabled")
async def set_enabled(
    request: Request, strategy_id: str, person: Posted, enabled: Annotated[str, Form()] = ""
) -> Response:
    """Disable (``enabled=false``) or enable (``true``) a strategy: the API's update route with
    the same strategy, ``enabled`` set (so posting twice changes nothing more)."""
    if not person.may("command"):
        raise Forbidden
    hub = hub_of(request)
    try:
        current = await get_strategy(strategy_id, hub, person.principal)
    except HTTPException:
        return render(request, "error.html", person, status_code=404, message="not_found")
    wanted = enabled == "true"
    try:
        spec = _spec_of(current).model_copy(update={"enabled": wanted})
        await replace_strategy(strategy_id, spec, hub, person.principal, request)
    except (ValueError, CommandRejected, HTTPException) as exc:
        return await _strategy_page(request, person, strategy_id, 400, error=_refusal(exc))
    done = "enabled_now" if wanted else "disabled_now"
    return RedirectResponse(f"/lighting/{strategy_id}?done={done}", status_code=303)


@router.post("/lighting/{strategy_id}/delete")
async def delete(
    request: Request, strategy_id: str, person: Posted, confirm: Annotated[str, Form()] = ""
) -> Response:
    """Delete a strategy (and its firing history) once the form's confirmation is ticked."""
    if not person.may("command"):
        raise Forbidden
    hub = hub_of(request)
    if confirm != "yes":
        return await _strategy_page(
            request, person, strategy_id, 400, error=_t(person, "lighting_confirm_first")
        )
    try:
        await delete_strategy(strategy_id, hub, person.principal, request)
    except HTTPException:
        return render(request, "error.html", person, status_code=404, message="not_found")
    return RedirectResponse("/lighting?done=deleted", status_code=303)


def _t(person: Viewer, key: str) -> str:
    return translator(person.language)(key)


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
    back = request.query_params.get("back")
    if back == "strategy":
        return RedirectResponse(f"/lighting/{strategy_id}#firings", status_code=303)
    return RedirectResponse(f"/lighting#strategy-{strategy_id}", status_code=303)
