"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc).

Their scripts and styles are served by the hub from ``static/`` (pinned copies, see
``static/README.md``), not from a CDN: a county's operations network usually has no internet.
A Content-Security-Policy lets the pages load nothing from another host either (ReDoc's
"API docs by Redocly" link would fetch its logo from Redocly's CDN).
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "STATIC_PATH", "install_docs_pages"]

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/static"
#: The pages' own origin only; inline styles for Swagger UI and ReDoc (styled-components),
#: ``data:`` images from their CSS, ``blob:`` workers for ReDoc's search.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    )
)

_SWAGGER_UI = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{static}/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="{static}/swagger-ui/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi_url}"></div>
<script src="{static}/swagger-ui/swagger-ui-bundle.js"></script>
<script src="{static}/docs-init.js"></script>
</body>
</html>
"""

_REDOC = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{static}/swagger-ui/favicon-32x32.png">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<noscript>ReDoc needs JavaScript. / ReDoc 需要启用 JavaScript。</noscript>
<redoc spec-url="{openapi_url}"></redoc>
<script src="{static}/redoc/redoc.standalone.js"></script>
</body>
</html>
"""


def install_docs_pages(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets under ``/static`` (create the app with
    ``docs_url=None, redoc_url=None``: these replace FastAPI's CDN-loading pages)."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")

    def page(template: str, request: Request, title: str) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a path-prefix proxy
        body = template.format(
            title=html.escape(title),
            static=html.escape(root + STATIC_PATH),
            openapi_url=html.escape(root + (app.openapi_url or "/openapi.json")),
        )
        return HTMLResponse(body, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return page(_SWAGGER_UI, request, f"{app.title} - Swagger UI")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return page(_REDOC, request, f"{app.title} - ReDoc")
