"""How the console's pages are rendered: its Jinja2 templates, their filters and words, and the
headers every page carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from cloud_hub.console.accounts import LANGUAGES
from cloud_hub.console.texts import translator

if TYPE_CHECKING:
    from cloud_hub.console.auth import Viewer

__all__ = ["PAGE_HEADERS", "STATIC_DIR", "render", "templates"]

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")

#: nothing but the hub's own files, never in a frame (clickjacking), never cached
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}


def _language(request: Request, person: Viewer | None) -> str:
    if person is not None:
        return person.language
    asked = request.query_params.get("lang")
    if asked in LANGUAGES:
        return asked
    accept = request.headers.get("accept-language", "")
    return "en" if accept.lower().startswith("en") else "zh"


def render(
    request: Request,
    name: str,
    person: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    language = _language(request, person)
    response = templates.TemplateResponse(
        request,
        name,
        {"person": person, "t": translator(language), "lang": language, **context},
        status_code=status_code,
    )
    response.headers.update(PAGE_HEADERS)
    tiles = getattr(request.app.state, "tiles_origin", None)
    if tiles:  # the county's tile server, and nothing else outside
        response.headers["Content-Security-Policy"] += f"; img-src 'self' {tiles}"
    return response


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    return _span(int((datetime.now(UTC) - _aware(value)).total_seconds()))


def _lasted(start: datetime, end: datetime | None = None) -> str:
    """How long from ``start`` to ``end`` (None: now): an alarm's duration."""
    end = _aware(end) if end is not None else datetime.now(UTC)
    return _span(max(0, int((end - _aware(start)).total_seconds())))


def _span(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d"


templates.env.filters["percent"] = _percent
templates.env.filters["ago"] = _ago
templates.env.filters["lasted"] = _lasted
