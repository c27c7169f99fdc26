"""The console's browser tests' common parts: Debian's Chromium driven by Playwright (never a
downloaded browser), a context that refuses every host but the hub (and records who asked),
the people the tests sign in as, and signing in.

The ``browser`` and ``shots`` fixtures (tests/conftest.py) wire these up.
"""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, BrowserContext, Page, Route

from cloud_hub.console.accounts import Accounts
from cloud_hub.registry import Registry
from cloud_hub.settings import HubSettings
from tests.helpers import is_loopback_url

__all__ = ["CHROMIUM", "PASSWORD", "browser_context", "create_people", "is_local", "sign_in"]

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"


def is_local(url: str) -> bool:
    return is_loopback_url(url) or url.startswith(("data:", "about:"))


async def create_people(settings: HubSettings) -> None:
    """ops and north-ops (operators, the second of site north), eve (a viewer, in English),
    root and north-admin (admins), north-tech (a technician of site north); one password."""
    registry = Registry(settings.registry_url)
    await registry.start()
    try:
        accounts = Accounts(registry)
        await accounts.create_user("test", "ops", PASSWORD, "operator")
        await accounts.create_user("test", "eve", PASSWORD, "viewer", language="en")
        await accounts.create_user("test", "north-ops", PASSWORD, "operator", site="north")
        await accounts.create_user("test", "root", PASSWORD, "admin")
        await accounts.create_user("test", "north-admin", PASSWORD, "admin", site="north")
        await accounts.create_user("test", "north-tech", PASSWORD, "technician", site="north")
    finally:
        await registry.close()


async def browser_context(
    browser: Browser, base: str, foreign: list[str], lang: str, **options: Any
) -> BrowserContext:
    """A context on the hub at ``base``; any request to another host is aborted and its URL
    appended to ``foreign`` (a test asserts it stays empty)."""
    options.setdefault("viewport", {"width": 1280, "height": 800})
    context = await browser.new_context(base_url=base, locale=lang, **options)

    async def only_loopback(route: Route) -> None:
        if is_local(route.request.url):
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort()

    await context.route("**/*", only_loopback)
    return context


async def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    await page.goto("/")
    assert "/login" in page.url  # signed out: to the sign-in page
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
