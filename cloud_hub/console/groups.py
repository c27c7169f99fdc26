"""The group commands pages: one command sent to many devices at once, and its progress.

``/commands`` has, for those who may command, a form in two steps (without JavaScript: choose
a profile and one of its commands, then say which devices — a site, a tag, device ids, always
of that profile — and the command's parameters, as generated for the device page), and the
recent groups the person may see, newest first, each with a progress bar. ``/commands/{id}``
shows one group: its bar and counts per status, the devices that refused it and why, its
commands (paged, each linking its device), and "cancel" for the unfinished ones.

Every figure and action is the API's own route function (one set of rules, one scope check,
one audit): :func:`~cloud_hub.api.routes_command_groups.create_group`, ``list_groups``,
``get_group`` and ``cancel_group``. A group selecting beyond the person's site does not
exist for them (404). ``groups.js`` follows a running group over ``progress.json`` (every
1.5 s until every command has a final status); without it a reload shows the same.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from cloud_hub.api.routes_command_groups import (
    MAX_OFFSET,
    GroupCreate,
    GroupOut,
    Selector,
    cancel_group,
    create_group,
    get_group,
    list_groups,
)
from cloud_hub.console.auth import Forbidden, Person, Posted, Viewer, hub_of
from cloud_hub.console.device import command_forms, form_params
from cloud_hub.console.rendering import render
from cloud_hub.console.texts import translator
from cloud_hub.hub import Hub
from cloud_hub.registry import TERMINAL_STATUSES, CommandRow, DeviceFilter, DeviceRow
from device_profiles import CommandRejected, DeviceProfile
from device_profiles.loader import builtin_profile_names, load_builtin_profile

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
#: groups per page of the list, commands per page of a group
GROUPS_PAGE = 20
COMMANDS_PAGE = 50
#: the bar's segments, left to right: the final statuses, then those still under way
SEGMENTS = (
    "succeeded", "failed", "rejected", "timed_out", "expired", "cancelled",
    "delivered", "sent", "queued",
)  # fmt: skip
DEFAULT_PROFILE = "smart_pole"
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


def _progress(group: GroupOut) -> dict[str, Any]:
    """A group's bar: one segment per status present (``x`` and ``width`` in percent of the
    bar), the share with a final status and the share succeeded (whole percents, rounded
    down: 100 only when it is all)."""
    counts = dict(group.by_status)
    order = [s for s in SEGMENTS if s in counts] + sorted(set(counts) - set(SEGMENTS))
    total = max(group.total, 1)
    segments, x = [], 0.0
    for status in order:
        width = 100 * counts[status] / total
        segments.append({"status": status, "count": counts[status], "x": x, "width": width})
        x += width
    finished = sum(n for s, n in counts.items() if s in TERMINAL_STATUSES)
    return {
        "group_id": group.group_id,
        "total": group.total,
        "by_status": counts,
        "done": group.done,
        "finished": finished,
        "percent": finished * 100 // total,
        "succeeded_percent": counts.get("succeeded", 0) * 100 // total,
        "segments": segments,
    }


def _labels(person: Viewer) -> dict[str, str]:
    """Each status's word (the device page's, and timed_out, which it does not show), and
    the bar's "finished"."""
    t = translator(person.language)
    words = {s: t("group_timed_out" if s == "timed_out" else s) for s in SEGMENTS}
    return words | {"finished": t("group_finished")}


def _profiles() -> dict[str, DeviceProfile]:
    """The built-in profiles that have commands."""
    loaded = (load_builtin_profile(name) for name in builtin_profile_names())
    return {p.name: p for p in loaded if p.commands}


async def _sites(hub: Hub, person: Viewer) -> list[str]:
    if person.principal.site is not None:
        return [person.principal.site]
    async with hub.registry.session() as db:
        found = await db.scalars(select(DeviceRow.site).distinct())
        return sorted(s for s in found.all() if s)


def _chosen(profiles: dict[str, DeviceProfile], values: dict[str, str]) -> tuple[str, str]:
    """The profile and command the form is at (the first ones when none or another is asked)."""
    profile = values.get("profile", "")
    if profile not in profiles:
        profile = DEFAULT_PROFILE if DEFAULT_PROFILE in profiles else next(iter(profiles), "")
    commands = profiles[profile].commands if profile else {}
    command = values.get("command", "")
    if command not in commands:
        command = next(iter(commands), "")
    return profile, command


async def _list_page(
    request: Request,
    person: Viewer,
    offset: int,
    values: dict[str, str],
    status_code: int = 200,
    error: str | None = None,
) -> Response:
    hub = hub_of(request)
    counted = Response()
    groups = await list_groups(hub, person.principal, counted, GROUPS_PAGE, offset)
    profiles = _profiles()
    profile, command = _chosen(profiles, values)
    form = None
    if profile and command:
        form = next(f for f in command_forms(profiles[profile]) if f["name"] == command)
    return render(
        request,
        "groups.html",
        person,
        status_code=status_code,
        active="groups",
        groups=[(g, _progress(g)) for g in groups],
        total=int(counted.headers["X-Total-Count"]),
        offset=offset,
        page_size=GROUPS_PAGE,
        profiles=profiles,
        profile=profile,
        command=command,
        form=form,
        sites=await _sites(hub, person),
        values=values,
        error=error,
        labels=_labels(person),
    )


@router.get("/commands", response_class=HTMLResponse)
async def groups_page(
    request: Request,
    person: Person,
    offset: Offset = 0,
    profile: str = "",
    command: str = "",
) -> Response:
    return await _list_page(request, person, offset, {"profile": profile, "command": command})


def _selector(form: dict[str, str]) -> Selector:
    """Which devices: the chosen profile's, and the site, tag and device ids given (the API
    confines a site-scoped person's to their site, and refuses another one)."""
    ids = [d.strip() for d in form.get("device_ids", "").split(",") if d.strip()]
    tag = form.get("tag", "").strip()
    try:
        tags = DeviceFilter.tag_pairs([tag]) if tag else None
    except ValueError as exc:
        raise CommandRejected(str(exc)) from None
    return Selector(
        site=form.get("site", "").strip() or None,
        profile=form.get("profile") or None,
        tags=tags,
        device_ids=ids or None,
    )


def _body(form: dict[str, str]) -> GroupCreate:
    """The group command the form asks for: a command of a built-in profile, its parameters
    typed as the profile says (CommandRejected naming what is wrong), and the selector."""
    profile = _profiles().get(form.get("profile", ""))
    name = form.get("command", "")
    if profile is None or name not in profile.commands:
        raise CommandRejected(f"no command '{name}' in profile '{form.get('profile')}'")
    params = form_params(profile.commands[name], form)
    return GroupCreate(selector=_selector(form), name=name, params=params)


@router.post("/commands")
async def send(request: Request, person: Posted) -> Response:
    """Send the form's group command through the API's route (the profile's checks, the
    site's confinement, the audit); a refusal shows its reason with the typed values kept."""
    if not person.may("command"):
        raise Forbidden
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        body = _body(form)
        if _everywhere(body.selector, person) and form.get("everywhere") != "yes":
            reason = translator(person.language)("group_everywhere_unconfirmed")
            return await _list_page(request, person, 0, form, 422, reason)
        group = await create_group(body, hub_of(request), person.principal, request)
    except CommandRejected as exc:
        return await _list_page(request, person, 0, form, 422, exc.reason)
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]) for e in exc.errors()[:3])
        return await _list_page(request, person, 0, form, 422, reason)
    except HTTPException as exc:  # another site's
        return await _list_page(request, person, 0, form, exc.status_code, str(exc.detail))
    return RedirectResponse(f"/commands/{group.group_id}", status_code=303)


def _everywhere(selector: Selector, person: Viewer) -> bool:
    """A selector of a profile alone, by a person of every site: every such device in the
    county (the form asks to confirm that)."""
    narrowed = selector.site or selector.tags or selector.device_ids
    return person.principal.site is None and not narrowed


async def _group(request: Request, person: Viewer, group_id: str) -> GroupOut | None:
    try:
        return await get_group(group_id, hub_of(request), person.principal)
    except HTTPException:  # none such, or beyond the person's site
        return None


async def _commands(hub: Hub, group_id: str, offset: int) -> list[CommandRow]:
    """One page of a group's commands, by device."""
    async with hub.registry.session() as db:
        query = (
            select(CommandRow)
            .where(CommandRow.group_id == group_id)
            .order_by(CommandRow.device_id, CommandRow.command_id)
            .offset(offset)
            .limit(COMMANDS_PAGE)
        )
        return list((await db.scalars(query)).all())


@router.get("/commands/{group_id}", response_class=HTMLResponse)
async def group_page(
    request: Request, group_id: str, person: Person, offset: Offset = 0
) -> Response:
    group = await _group(request, person, group_id)
    if group is None:
        return render(request, "error.html", person, status_code=404, message="not_found")
    cancelled = request.query_params.get("cancelled")
    return render(
        request,
        "group.html",
        person,
        active="groups",
        group=group,
        p=_progress(group),
        commands=await _commands(hub_of(request), group_id, offset),
        offset=offset,
        page_size=COMMANDS_PAGE,
        labels=_labels(person),
        cancelled=int(cancelled) if cancelled and cancelled.isdigit() else None,
    )


@router.get("/commands/{group_id}/progress.json")
async def group_progress(
    request: Request,
    group_id: str,
    person: Person,
    offset: Offset = 0,
    commands: bool = True,
) -> Response:
    """The group's bar, and (unless ``commands=false``: the list's bars) the statuses of one
    page of its commands, for ``groups.js``."""
    group = await _group(request, person, group_id)
    if group is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    body = _progress(group)
    if commands:
        body["commands"] = [
            {"command_id": c.command_id, "status": c.status, "detail": c.detail}
            for c in await _commands(hub_of(request), group_id, offset)
        ]
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/commands/{group_id}/cancel")
async def cancel(request: Request, group_id: str, person: Posted) -> Response:
    """Cancel every command of the group without a final status yet: the API's group cancel
    (its scope check, one statement, one audit entry); one that finished meanwhile stays."""
    if not person.may("command"):
        raise Forbidden
    try:
        done = await cancel_group(group_id, hub_of(request), person.principal, request)
    except HTTPException:  # none such, or beyond the person's site
        return render(request, "error.html", person, status_code=404, message="not_found")
    cancelled = done.cancelled
    return RedirectResponse(f"/commands/{group_id}?cancelled={cancelled}", status_code=303)
