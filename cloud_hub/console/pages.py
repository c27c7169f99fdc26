"""The console's pages (Jinja2, served at ``/``): sign-in, overview, devices, alarms, account.

Every page needs a signed-in person (else a redirect to ``/login``) and shows only what their
role and site allow, through the same scope checks as the API (:mod:`cloud_hub.api.scope`);
every form carries the session's CSRF token; every action is audit-logged as the person. The
pages work without JavaScript; ``console.js`` only adds live updates.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import select

from cloud_hub.alarms.models import ALARM_STATES
from cloud_hub.api.audit import audit
from cloud_hub.api.event_stream import EventStream
from cloud_hub.api.routes_alarms import SEVERITIES, AlarmAck, acknowledge_alarm, list_alarms
from cloud_hub.api.routes_users import UserUpdate
from cloud_hub.api.routes_users import update_user as update_user_route
from cloud_hub.console.accounts import (
    LANGUAGES,
    ROLES,
    AccountError,
    Accounts,
    BadCredentials,
    SignInLimited,
)
from cloud_hub.console.auth import (
    COOKIE,
    CsrfRefused,
    Forbidden,
    Person,
    Posted,
    SignInRequired,
    accounts_of,
    hub_of,
)
from cloud_hub.console.device import router as device_router
from cloud_hub.console.fleet import router as fleet_router
from cloud_hub.console.groups import router as groups_router
from cloud_hub.console.lighting import router as lighting_router
from cloud_hub.console.map import router as map_router
from cloud_hub.console.overview import (
    COLLECTION_TARGET,
    ONLINE_TARGET,
    overview,
)
from cloud_hub.console.rendering import STATIC_DIR, render
from cloud_hub.console.texts import TEXTS, translator
from cloud_hub.hub import Hub
from cloud_hub.registry import DeviceFilter, DeviceRow
from device_profiles.display import format_value

__all__ = ["install_console", "router"]

router = APIRouter(include_in_schema=False)
LOGIN_CSRF = "hub_login_csrf"
PAGE_SIZE = 50
#: seconds between comments that keep a quiet live stream open
LIVE_HEARTBEAT_S = 15.0


# -- sign-in ------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/") -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", None, next=_safe_next(next), login_csrf=token)
    response.set_cookie(
        LOGIN_CSRF, token, httponly=True, samesite="lax", secure=_https(request), max_age=3600
    )
    return response


def _safe_next(target: str) -> str:
    """Only a path of this site (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    expected = request.cookies.get(LOGIN_CSRF, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        raise CsrfRefused
    address = request.client.host if request.client else "-"
    try:
        signed = await accounts_of(request).sign_in(username, password, address)
    except (BadCredentials, SignInLimited) as exc:
        key = "limited" if isinstance(exc, SignInLimited) else "bad_credentials"
        token = secrets.token_urlsafe(32)
        response = render(
            request,
            "login.html",
            None,
            status_code=429 if key == "limited" else 401,
            next=_safe_next(next),
            login_csrf=token,
            error=key,
            username=username,
        )
        response.set_cookie(
            LOGIN_CSRF, token, httponly=True, samesite="lax", secure=_https(request)
        )
        return response
    signed_in = RedirectResponse(_safe_next(next), status_code=303)
    signed_in.set_cookie(
        COOKIE,
        signed.token,
        httponly=True,
        samesite="lax",
        secure=_https(request),
        max_age=int(accounts_of(request).session_ttl.total_seconds()),
    )
    signed_in.delete_cookie(LOGIN_CSRF)
    return signed_in


@router.post("/logout")
async def logout(request: Request, person: Posted) -> Response:
    await accounts_of(request).sign_out(person.token)
    await audit(request, "user.sign_out", f"user:{person.username}")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- overview -----------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, person: Person) -> Response:
    hub = hub_of(request)
    figures = await overview(hub.registry, person.principal, hub.settings.console.timezone)
    return render(
        request,
        "overview.html",
        person,
        figures=figures,
        collection_target=COLLECTION_TARGET,
        online_target=ONLINE_TARGET,
    )


# -- devices ------------------------------------------------------------------------------


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(
    request: Request,
    person: Person,
    site: str | None = None,
    profile: str | None = None,
    status: str | None = None,
    q: str | None = None,
    tag: str | None = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    """Devices, filtered and paged in the registry (never all rows in Python)."""
    scope = person.principal.site
    registry = hub_of(request).registry
    error = None
    try:
        tags = DeviceFilter.tag_pairs([tag]) if tag and tag.strip() else {}
    except ValueError as exc:
        tags, error = {}, str(exc)
    filters = DeviceFilter(
        site=scope or site or None, profile=profile, status=status, search=q, tags=tags
    )
    rows, total = await registry.page_devices(filters, PAGE_SIZE, offset)
    async with registry.session() as db:
        sites_query = select(DeviceRow.site).distinct()
        profiles_query = select(DeviceRow.profile).distinct()
        if scope is not None:
            sites_query = sites_query.where(DeviceRow.site == scope)
            profiles_query = profiles_query.where(DeviceRow.site == scope)
        sites = sorted(s for s in (await db.scalars(sites_query)).all() if s)
        profiles = sorted((await db.scalars(profiles_query)).all())
    ingest = hub_of(request).ingest
    kinds = {
        d.device_id: kind.describe(person.language)
        for d in rows
        if (kind := ingest.profile_of(d.device_id)) is not None
    }
    return render(
        request,
        "devices.html",
        person,
        devices=rows,
        kinds=kinds,
        total=total or 0,
        offset=offset,
        page_size=PAGE_SIZE,
        sites=sites,
        profiles=profiles,
        filters={
            "site": site or "",
            "profile": profile or "",
            "status": status or "",
            "q": q or "",
            "tag": tag or "",
        },
        error=error,
        status_code=400 if error else 200,
    )


# -- alarms -------------------------------------------------------------------------------


@router.get("/alarms", response_class=HTMLResponse)
async def alarms_page(
    request: Request,
    person: Person,
    state: str = "active",
    severity: str | None = None,
    device: str | None = None,
    cursor: str | None = None,
) -> Response:
    """The alarms of one state (and severity, device), newest first: the API's own list (and
    its site scope)."""
    hub = hub_of(request)
    chosen = state if state in ALARM_STATES else None
    severity = severity if severity in SEVERITIES else None
    device = (device or "").strip() or None

    async def listed(after: str | None) -> Any:
        return await list_alarms(
            hub.alarms, hub, person.principal, chosen, severity, device, PAGE_SIZE, after
        )

    try:
        page = await listed(cursor)
    except HTTPException:  # a cursor that is no cursor: the first page
        page = await listed(None)
    return render(
        request,
        "alarms.html",
        person,
        alarms=page.items,
        words=_alarm_words(hub, page.items, person.language),
        next_cursor=page.next_cursor,
        state=state,
        severities=SEVERITIES,
        filters={"severity": severity or "", "device": device or ""},
    )


@dataclass(frozen=True)
class AlarmWords:
    """An alarm as the person reads it: its rule and, for a profile's rule, what holds."""

    title: str
    message: str | None = None


def _alarm_words(hub: Hub, alarms: Sequence[Any], language: str) -> dict[str, AlarmWords]:
    """Each alarm's rule in the person's language: a profile rule's description as its profile
    words it, with the condition that raised it (the point, its value as the profile shows it,
    the threshold); the hub's own rules (offline, flooding, claims) from the console's texts,
    their message as it was composed when the alarm was raised."""
    t = translator(language)
    words: dict[str, AlarmWords] = {}
    for alarm in alarms:
        profile = hub.ingest.profile_of(alarm.device_id) if alarm.device_id else None
        rule = profile.alarms.get(alarm.rule) if profile is not None else None
        if profile is not None and rule is not None:
            point = profile.points.get(rule.point)
            message = None
            if point is not None and alarm.value is not None:
                shown = format_value(point, alarm.value)
                limit = format_value(point, rule.value)
                message = (
                    f"{profile.describe_point(rule.point, language)} = {shown} ({rule.op} {limit})"
                )
            words[alarm.alarm_id] = AlarmWords(
                profile.describe_alarm(alarm.rule, language), message
            )
        elif (key := f"rule_{alarm.rule}") in TEXTS:
            words[alarm.alarm_id] = AlarmWords(t(key))
    return words


@router.get("/alarms/live")
async def alarms_live(request: Request, person: Person) -> Response:
    """The alarm transitions the person may see, as server-sent events (the API's stream: the
    durable event log merged with this process's bus, filtered by the person's site)."""
    hub = hub_of(request)
    stream = EventStream(
        hub.events,
        hub.event_log,
        frozenset({"alarm"}),
        None,
        LIVE_HEARTBEAT_S,
        lambda _: True,
        request.app.state.sites,
        person.principal.site,
    )
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream.messages(), media_type="text/event-stream", headers=headers)


@router.post("/alarms/{alarm_id}/acknowledge")
async def acknowledge(
    request: Request, alarm_id: str, person: Posted, note: Annotated[str, Form()] = ""
) -> Response:
    if not person.may("alarm:ack"):
        raise Forbidden
    hub = hub_of(request)
    try:  # the API's own acknowledgement: scope (404 outside the site), engine, audit
        await acknowledge_alarm(
            alarm_id, AlarmAck(note=note[:500]), hub.alarms, hub, person.principal, request
        )
    except HTTPException:
        return render(request, "error.html", person, status_code=404, message="not_found")
    # (already acknowledged by someone quicker: the page shows who)
    return RedirectResponse("/alarms", status_code=303)


# -- people (admins) ----------------------------------------------------------------------


@router.get("/users", response_class=HTMLResponse)
async def users_page(request: Request, person: Person, saved: str | None = None) -> Response:
    if not person.may("admin"):
        raise Forbidden
    users = await accounts_of(request).list_users(person.principal.site)
    if saved not in {u.username for u in users}:  # an outcome line for a listed person only
        saved = None
    return render(
        request, "users.html", person, active="users", users=users, roles=ROLES, saved=saved
    )


@router.post("/users", response_class=HTMLResponse)
async def create_user(
    request: Request,
    person: Posted,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()],
    site: Annotated[str, Form()] = "",
    language: Annotated[str, Form()] = "zh",
) -> Response:
    if not person.may("admin"):
        raise Forbidden
    scope = person.principal.site
    chosen = site.strip() or None
    if scope is not None and chosen not in (None, scope):
        raise Forbidden
    accounts = accounts_of(request)
    try:
        await accounts.create_user(
            person.principal.key_id, username.strip(), password, role, scope or chosen, language
        )
    except (AccountError, ValueError) as exc:
        users = await accounts.list_users(scope)
        return render(
            request, "users.html", person, status_code=400, active="users", users=users,
            roles=ROLES, error=str(exc),
        )  # fmt: skip
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{username}/disable")
async def disable_user(request: Request, username: str, person: Posted) -> Response:
    if not person.may("admin"):
        raise Forbidden
    accounts = accounts_of(request)
    row = await accounts.get_user(username)
    scope = person.principal.site
    if row is None or (scope is not None and row.site != scope):
        return render(request, "error.html", person, status_code=404, message="not_found")
    await accounts.disable_user(person.principal.key_id, username)
    return RedirectResponse("/users", status_code=303)


@router.post("/users/{username}", response_class=HTMLResponse)
async def update_user(
    request: Request,
    username: str,
    person: Posted,
    role: Annotated[str, Form()],
    language: Annotated[str, Form()],
    site: Annotated[str, Form()] = "",
) -> Response:
    """A person's role, site and language, through the API's update route (its scope, its
    lock-out check, its audit); a refusal shows the API's reason."""
    if not person.may("admin"):
        raise Forbidden
    try:
        body = UserUpdate(role=role, site=site.strip() or None, language=language)
        await update_user_route(request, username, body, person.principal)
    except (ValidationError, HTTPException) as exc:
        if isinstance(exc, HTTPException) and exc.status_code == 404:
            return render(request, "error.html", person, status_code=404, message="not_found")
        users = await accounts_of(request).list_users(person.principal.site)
        return render(
            request, "users.html", person, active="users", users=users, roles=ROLES,
            status_code=exc.status_code if isinstance(exc, HTTPException) else 400,
            error=f"{username}: {_refusal(exc)}",
        )  # fmt: skip
    return RedirectResponse(f"/users?saved={quote(username)}#user-{quote(username)}", 303)


def _refusal(exc: ValidationError | HTTPException) -> str:
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


# -- account ------------------------------------------------------------------------------


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request, person: Person) -> Response:
    return render(request, "account.html", person)


@router.post("/account/password", response_class=HTMLResponse)
async def change_password(
    request: Request,
    person: Posted,
    old_password: Annotated[str, Form()],
    new_password: Annotated[str, Form()],
) -> Response:
    try:
        await accounts_of(request).change_password(
            person.username, old_password, new_password, person.token
        )
    except AccountError as exc:
        message = "bad_credentials" if isinstance(exc, BadCredentials) else str(exc)
        return render(request, "account.html", person, status_code=400, error=message)
    return render(request, "account.html", person, done="password_changed")


@router.post("/account/language")
async def change_language(
    request: Request, person: Posted, language: Annotated[str, Form()]
) -> Response:
    if language in LANGUAGES:
        await accounts_of(request).set_language(person.username, language)
        await audit(request, "user.language", f"user:{person.username}", language=language)
    return RedirectResponse("/account", status_code=303)


# -- wiring -------------------------------------------------------------------------------


def install_console(app: FastAPI, hub: Hub) -> None:
    """Serve the console of ``hub`` on ``app``: its pages, static files and error pages."""
    settings = hub.settings.console
    app.state.accounts = Accounts(hub.registry, session_ttl=timedelta(hours=settings.session_hours))
    app.state.tiles_origin = settings.tiles_origin
    app.mount("/console-static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.include_router(router)
    app.include_router(device_router)
    app.include_router(map_router)
    app.include_router(lighting_router)
    app.include_router(groups_router)
    app.include_router(fleet_router)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return render(request, "error.html", None, status_code=403, message="forbidden")

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return render(request, "error.html", None, status_code=403, message="csrf")


def _quote(path: str) -> str:
    return quote(path, safe="/")
