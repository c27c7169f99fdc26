"""``/docs`` and ``/redoc`` work on a network without internet (issue 9, item 9).

The hub runs in-process (real Mosquitto, SQLite stores). A real browser, Debian's Chromium
driven by Playwright, renders both pages; every request to a host other than loopback fails
the test (and is not sent). Screenshots go to ``$DOCS_SCREENSHOTS`` (default: the test's
temporary directory), to look at.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Request, Route, async_playwright

from cloud_hub.api.docs_pages import STATIC_DIR
from tests.helpers import RunningHub, hub_settings, is_loopback_url, running_hub

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium package (scripts/test.sh installs it)
ROOT = Path(__file__).resolve().parents[2]
#: RFC 2606 names: examples in the schema, never a host a page could load from.
EXAMPLE_DOMAINS = ("example", "example.com", "example.org", "example.net")
URL = re.compile(r"""\b(?:https?|wss?|ftp)://[^\s"'<>()\\]+""", re.IGNORECASE)
CSS_URL = re.compile(r"""(?:url\(|@import)\s*["']?([^"')\s;]+)""", re.IGNORECASE)


def _is_example(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return any(host == d or host.endswith("." + d) for d in EXAMPLE_DOMAINS)


class _Links(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href", "spec-url") and v]


@contextlib.asynccontextmanager
async def _hub(mosquitto: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[RunningHub]:
    async with running_hub(hub_settings(mosquitto, tmp_path, unique_id)) as hub:
        yield hub


async def test_no_page_the_hub_serves_references_an_external_host(
    mosquitto: Any, tmp_path: Path, unique_id: str
) -> None:
    async with _hub(mosquitto, tmp_path, unique_id) as hub:
        openapi = (await hub.api.get("/openapi.json")).json()
        pages = ["/docs", "/redoc", "/openapi.json"] + [
            path for path, item in openapi["paths"].items() if "get" in item and "{" not in path
        ]
        pages.remove("/api/v1/events/stream")  # endless; no HTML or URLs in it
        seen: set[str] = set()
        while pages:
            page = pages.pop()
            if page in seen:
                continue
            seen.add(page)
            response = await hub.api.get(page)
            assert response.status_code in (200, 422), (page, response.text[:200])
            kind = response.headers.get("content-type", "")
            text = response.text if kind.startswith(("text/", "application/")) else ""
            if "javascript" in kind:
                continue  # a bundle's strings (licence links, JSON Schema ids): the browser test
            if kind.startswith("text/html"):
                parser = _Links()
                parser.feed(text)
                for link in parser.links:
                    url = urljoin(str(response.url), link)
                    assert is_loopback_url(url), f"{page} links to {link}"
                    pages.append(urlsplit(url).path)
            if kind.startswith("text/css"):
                for found in CSS_URL.findall(text):
                    url = urljoin(str(response.url), found)
                    assert found.startswith("data:") or is_loopback_url(url), (
                        f"{page} loads {found}"
                    )
                continue  # (an SVG namespace inside a data: URL is no reference)
            for url in URL.findall(text):
                assert is_loopback_url(url) or _is_example(url), f"{page} references {url}"
        assert {
            "/static/swagger-ui/swagger-ui-bundle.js",
            "/static/redoc/redoc.standalone.js",
        } <= seen


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    """Where the screenshots go."""
    path = Path(os.environ.get("DOCS_SCREENSHOTS", tmp_path))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize(
    ("page", "visible"),
    [
        # a known route's summary, and the operation rendered under it
        ("/docs", "Query Telemetry"),
        ("/redoc", "Query Telemetry"),
    ],
)
async def test_the_docs_render_in_a_browser_without_internet(
    mosquitto: Any, tmp_path: Path, unique_id: str, artifacts: Path, page: str, visible: str
) -> None:
    outside: list[str] = []
    failed: list[str] = []
    blocked: list[str] = []  # by the page's Content-Security-Policy: never sent
    errors: list[str] = []

    def on_failed(request: Request) -> None:
        if request.failure == "csp" and not is_loopback_url(request.url):
            blocked.append(request.url)
        else:
            failed.append(f"{request.url}: {request.failure}")

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" not in message.text:
            errors.append(message.text)

    async def only_loopback(route: Route) -> None:
        if is_loopback_url(route.request.url) or route.request.url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort("internetdisconnected")

    async with (
        _hub(mosquitto, tmp_path, unique_id) as hub,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            await context.route("**/*", only_loopback)
            tab = await context.new_page()
            tab.on("requestfailed", on_failed)
            tab.on("pageerror", lambda e: errors.append(str(e)))
            tab.on("console", on_console)
            response = await tab.goto(f"{hub.api.base_url}{page}")
            assert response is not None and response.status == 200
            found = tab.get_by_text(visible, exact=True).filter(visible=True).first
            await found.wait_for(timeout=30_000)
            await found.scroll_into_view_if_needed()
            await tab.screenshot(path=artifacts / f"{page.strip('/')}.png", full_page=False)
        finally:
            await browser.close()
    assert not outside, f"{page} requested other hosts: {outside}"
    assert not failed, f"{page}: requests failed: {failed}"
    assert not errors, f"{page}: errors in the browser: {errors}"
    # ReDoc's "API docs by Redocly" logo, from Redocly's CDN: refused by the policy
    assert set(blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, blocked


def test_the_vendored_assets_are_package_data() -> None:
    """Every file under ``static/`` matches a ``package-data`` pattern (else a wheel lacks it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cloud_hub"]
    package = STATIC_DIR.parent.parent  # cloud_hub/, where setuptools expands the patterns
    listed = {path for pattern in patterns for path in package.glob(pattern)}
    files = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert len(files) >= 9
    assert not files - listed, sorted(str(p.relative_to(package)) for p in files - listed)
