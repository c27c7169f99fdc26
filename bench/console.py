"""The console with a county's fleet: page costs with 10,000 devices against 100 in the same run.

    .venv/bin/python -m bench.console [--devices 10000]

The hub (in this process, a private Mosquitto, the embedded SQLite stores) with a registry of
``--devices`` positioned devices in site ``big`` and 100 in site ``small``; two people, one of
each site's scope, so each page is measured at both sizes in the same run (the 100-device view
is the baseline). Debian's Chromium (Playwright, headless) measures:

- the device list (first page of 50) and the overview: time to first byte and to
  DOMContentLoaded (Navigation Timing), median of 5 loads;
- the map: from navigation until every marker is clustered and drawn (``hubMap.ready``), and
  the time of one redraw (pan or zoom: clustering plus drawing), median of 20;
- the server's cost per request (``httpx``, with the person's cookie), median of 10: the
  device list, the overview and the map's markers (``/map/devices.json``).

No assertions; it prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from playwright.async_api import Page, async_playwright

from bench._servers import console, machine, print_table, private_servers
from cloud_hub.console.accounts import Accounts
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage.settings import SqliteStoreSettings
from iot_runtime.mqtt import MqttSettings
from tests.harness import free_port
from tests.helpers import running_hub

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "bench password 1"


async def seed(registry_url: str, big: int) -> None:
    registry = Registry(registry_url)
    await registry.start()
    try:
        now = utcnow()
        async with registry.session.begin() as db:
            for site, count in (("big", big), ("small", 100)):
                agents = max(1, count // 100)
                for a in range(agents):
                    db.add(AgentRow(agent_id=f"{site}-agent-{a}", state="online", created_at=now))
                await db.flush()
                side = int(count**0.5) + 1
                for n in range(count):
                    db.add(
                        DeviceRow(
                            device_id=f"{site}-{n:05d}", agent_id=f"{site}-agent-{n % agents}",
                            profile="smart_pole", status="online" if n % 20 else "offline",
                            site=site, pole=f"P{n // 3:05d}", mount_position="top",
                            lat=24.4 + (n // side) * 0.0004, lon=118.1 + (n % side) * 0.0004,
                            created_at=now,
                        )
                    )  # fmt: skip
        accounts = Accounts(registry)
        await accounts.create_user("bench", "big", PASSWORD, "operator", site="big")
        await accounts.create_user("bench", "small", PASSWORD, "operator", site="small")
    finally:
        await registry.close()


async def sign_in(page: Page, username: str) -> None:
    await page.goto("/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/")


async def navigation(page: Page, path: str, runs: int = 5) -> tuple[float, float]:
    ttfb, dcl = [], []
    for _ in range(runs):
        await page.goto(path)
        timing: dict[str, float] = await page.evaluate(
            "() => { const t = performance.getEntriesByType('navigation')[0];"
            " return {ttfb: t.responseStart - t.requestStart,"
            " dcl: t.domContentLoadedEventEnd - t.startTime}; }"
        )
        ttfb.append(timing["ttfb"])
        dcl.append(timing["dcl"])
    return statistics.median(ttfb), statistics.median(dcl)


async def map_times(page: Page) -> tuple[float, float, int, int]:
    started = time.perf_counter()
    await page.goto("/map")
    for _ in range(30_000):  # polled from outside: the page's CSP forbids wait_for_function
        if await page.evaluate("() => !!(window.hubMap && hubMap.ready)"):
            break
        await asyncio.sleep(0.01)
    ready_ms = (time.perf_counter() - started) * 1000
    redraw_ms: float = await page.evaluate(
        "() => { const times = []; for (let i = 0; i < 20; i++) {"
        " const t = performance.now(); hubMap.redraw(); times.push(performance.now() - t); }"
        " times.sort((a, b) => a - b); return times[10]; }"
    )
    markers = await page.evaluate("() => hubMap.state.devices.length")
    clusters = await page.evaluate("() => hubMap.state.clusters.length")
    return ready_ms, redraw_ms, markers, clusters


async def server_cost(base: str, cookies: dict[str, str], path: str, runs: int = 10) -> float:
    times = []
    async with httpx.AsyncClient(base_url=base, cookies=cookies) as client:
        for _ in range(runs):
            started = time.perf_counter()
            response = await client.get(path)
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def main(devices: int) -> None:
    console.print(f"bench.console on {machine()}")
    with private_servers() as servers:
        settings = HubSettings(
            mqtt=MqttSettings(host=servers.mosquitto.host, port=servers.mosquitto.port),
            client_id="bench-console",
            storage=SqliteStoreSettings(path=servers.tmp / "telemetry.db"),
            registry_url=f"sqlite+aiosqlite:///{servers.tmp / 'registry.db'}",
            api=ApiSettings(port=free_port()),
            log_level="WARNING",
        )
        started = time.perf_counter()
        await seed(settings.registry_url, devices)
        console.print(f"seeded {devices + 100} devices in {time.perf_counter() - started:.1f} s")
        async with running_hub(settings) as hub, async_playwright() as playwright:
            base = str(hub.api.base_url)
            browser = await playwright.chromium.launch(executable_path=CHROMIUM)
            rows: dict[str, list[str]] = {}
            for who, size in (("small", 100), ("big", devices)):
                context = await browser.new_context(base_url=base, locale="zh-CN")
                page = await context.new_page()
                await sign_in(page, who)
                cookies = {c["name"]: c["value"] for c in await context.cookies()}
                list_ttfb, list_dcl = await navigation(page, "/devices")
                over_ttfb, over_dcl = await navigation(page, "/")
                ready, redraw, markers, clusters = await map_times(page)
                costs = [
                    await server_cost(base, cookies, path)
                    for path in ("/devices", "/", "/map/devices.json")
                ]
                rows[who] = [
                    f"{size:,}", f"{list_ttfb:.0f}", f"{list_dcl:.0f}", f"{over_ttfb:.0f}",
                    f"{over_dcl:.0f}", f"{ready:.0f}", f"{redraw:.1f}", f"{clusters:,}",
                    *(f"{c:.1f}" for c in costs),
                ]  # fmt: skip
                assert markers == size, (markers, size)
                await context.close()
            await browser.close()
    columns = [
        "devices", "list TTFB ms", "list DCL ms", "overview TTFB ms", "overview DCL ms",
        "map ready ms", "map redraw ms", "clusters", "server list ms", "server overview ms",
        "server markers ms",
    ]  # fmt: skip
    print_table(
        "the console at two fleet sizes (medians)",
        columns,
        [rows["small"], rows["big"]],
        note="TTFB/DCL: Navigation Timing of 5 loads; map ready: navigation until every marker "
        "is clustered and drawn; redraw: one pan/zoom frame (median of 20); server: the request "
        "alone with the person's cookie (median of 10).",
        left=0,
    )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args(argv)
    asyncio.run(main(args.devices))


if __name__ == "__main__":
    cli()
