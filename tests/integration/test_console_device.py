"""The device page's metadata form and its chart of several points, in a real browser (Debian's
Chromium driven by Playwright), against a real hub, Mosquitto, and an edge agent polling two
simulated poles (one of site north, one of site south).

A technician of site north edits a north pole's pole, mount position, position and tags in the
form (the site shown, fixed); the page shows them, the registry has them, the audit log names
``user:north-tech``; a position without its longitude and a tag line without ``=`` are refused
with the reason, what was typed kept, nothing changed; another site's pole is missing to them,
and a forged site in the form moves nothing. An operator sees the metadata but no form, and
gets 403 posting it with a valid CSRF token. The chart draws a lamp's dimming level and its
power as two series on two axes (% left, W right), as maxima too, follows the window's width,
and fits a phone's screen; its data refuses a point that is unknown or not numeric (by name)
or a seventh point, and spans 30 days. No request leaves loopback. Screenshots go to
``$CONSOLE_SCREENSHOTS``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, Response
from sqlalchemy import update

from cloud_hub.registry import DeviceRow, Registry
from cloud_hub.storage import SqliteStore, StoredReading
from cloud_hub.storage.settings import SqliteStoreSettings
from iot_runtime.mqtt import MqttSettings
from tests.harness.browser import browser_context, create_people, sign_in
from tests.helpers import (
    devices_registered,
    eventually,
    hub_settings,
    poles_behind_an_agent,
    running_hub,
)

pytestmark = pytest.mark.integration

PHONE = {"width": 390, "height": 844}
SEVEN_POINTS = ("dimming", "voltage", "current", "power", "energy", "tilt", "temperature")


async def _an_evening(path: Path, agent_id: str, device_id: str) -> None:
    """The last hour of the pole's lamp, every 10 s, in the hub's telemetry store: full light,
    dimmed to 60 % and then to 30 %, its power following (written before the hub starts)."""
    store = SqliteStore(SqliteStoreSettings(path=path))
    await store.start()
    try:
        now_ms = int(time.time() * 1000)
        readings = []
        for ago_s in range(3600, 20, -10):
            dimming = 100 if ago_s > 2400 else 60 if ago_s > 900 else 30
            power = round(dimming * 0.9 + 3 * math.sin(ago_s / 300), 1)
            readings.append(
                StoredReading(
                    device_id=device_id,
                    agent_id=agent_id,
                    profile="smart_pole",
                    ts_ms=now_ms - ago_s * 1000,
                    values={"dimming": dimming, "power": power},
                )
            )
        await store.write(readings)
    finally:
        await store.close()


async def _csrf_post(
    context: BrowserContext, page: Page, base: str, path: str, data: dict[str, str]
) -> httpx.Response:
    """A POST with the person's cookie and their valid CSRF token, outside the page's forms."""
    csrf = await page.locator("header input[name=csrf_token]").get_attribute("value")
    assert csrf
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    async with httpx.AsyncClient(base_url=base, cookies=cookies) as raw:
        return await raw.post(path, data={"csrf_token": csrf, **data})


def _posted(response: Response) -> bool:
    return response.request.method == "POST" and response.url.endswith("/metadata")


async def _chart(page: Page, series: list[str]) -> dict[str, Any]:
    """``window.hubChart`` once it draws ``series`` with data (CSP: no wait_for_function)."""

    async def drawn() -> dict[str, Any] | None:
        chart = await page.evaluate("() => window.hubChart || null")
        return chart if chart and chart["series"] == series and chart["points"] else None

    result: dict[str, Any] = await eventually(drawn)
    return result


async def _plot_width(page: Page) -> float:
    width: float = await page.evaluate(
        "() => document.querySelector('#chart .uplot').getBoundingClientRect().width"
    )
    return width


async def test_a_technician_edits_metadata_and_the_chart_draws_several_points(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    agent_id = f"agent-{unique_id}"
    pole_n, pole_s = f"pole-n-{unique_id}", f"pole-s-{unique_id}"
    await _an_evening(tmp_path / "telemetry.db", agent_id, pole_n)
    registry = Registry(settings.registry_url)
    await registry.start()
    foreign: list[str] = []
    mqtt = MqttSettings(host=private_mosquitto.host, port=private_mosquitto.port)
    try:
        async with (
            running_hub(settings) as hub,
            poles_behind_an_agent(mqtt, tmp_path / "agent", agent_id, [pole_n, pole_s]),
        ):
            await devices_registered(hub.api, [pole_n, pole_s])
            async with registry.session.begin() as db:  # sites, as provisioning sets them
                for device_id, site in ((pole_n, "north"), (pole_s, "south")):
                    await db.execute(
                        update(DeviceRow)
                        .where(DeviceRow.device_id == device_id)
                        .values(site=site, pole=f"P-{site}-01")
                    )
            base = str(hub.api.base_url)

            # -- a technician of north edits the north pole's metadata --------------------
            tech = await browser_context(browser, base, foreign, "zh-CN")
            page = await tech.new_page()
            await sign_in(page, "north-tech")
            await page.wait_for_url(f"{base}/")
            await page.goto(f"/devices/{pole_n}")
            meta = page.locator("#metadata")
            assert await meta.locator("[data-meta=site]").inner_text() == "north"
            assert await meta.locator("[data-meta=pole]").inner_text() == "P-north-01"
            await meta.locator("summary").click()
            form = page.locator("#metadata-form")
            assert await form.locator("input[name=site]").count() == 0  # theirs, fixed
            assert await form.locator("input[readonly]").input_value() == "north"
            await form.locator("input[name=pole]").fill("P-north-07")
            await form.locator("input[name=mount_position]").fill("arm-2")
            await form.locator("input[name=lat]").fill("24.4812")
            await form.locator("input[name=lon]").fill("118.0894")
            await form.locator("textarea[name=tags]").fill("road=G205\ncircuit = C3\n")
            await form.locator("button[type=submit]").click()
            await page.wait_for_url(f"**/devices/{pole_n}?saved=*")
            saved = await page.locator("#metadata-saved").inner_text()
            assert saved == "已保存：灯杆、挂载位、纬度、经度、标签", saved  # noqa: RUF001
            assert await meta.locator("[data-meta=pole]").inner_text() == "P-north-07"
            assert await meta.locator("[data-meta=mount_position]").inner_text() == "arm-2"
            assert await meta.locator("[data-meta=position]").inner_text() == "24.4812, 118.0894"
            tags = await meta.locator("[data-meta=tags] li").all_inner_texts()
            assert tags == ["circuit=C3", "road=G205"]
            row = (await registry.devices_by_id())[pole_n]
            assert (row.site, row.pole, row.mount_position) == ("north", "P-north-07", "arm-2")
            assert (row.lat, row.lon) == (24.4812, 118.0894)
            assert row.tags == {"road": "G205", "circuit": "C3"}
            audit = (await hub.api.get("/api/v1/audit", params={"action": "device.update"})).json()
            assert [(e["actor"], e["target"]) for e in audit["items"]] == [
                ("user:north-tech", f"device:{pole_n}")
            ]
            assert audit["items"][0]["detail"]["after"]["tags"] == {"road": "G205", "circuit": "C3"}
            await meta.locator("summary").click()  # the form again (closed after saving)
            await meta.screenshot(path=shots / "device-metadata.png")

            # refused with the API's reason, what was typed kept, nothing changed
            await form.locator("input[name=pole]").fill("P-north-08")
            await form.locator("input[name=lon]").fill("")
            async with page.expect_response(_posted) as posted:
                await form.locator("button[type=submit]").click()
            assert (await posted.value).status == 422
            error = await page.locator("#metadata-error").inner_text()
            assert "lat and lon are both numbers or both null" in error, error
            assert await form.locator("input[name=pole]").input_value() == "P-north-08"
            assert await form.locator("input[name=lon]").input_value() == ""
            await form.locator("input[name=lon]").fill("118.0894")
            await form.locator("textarea[name=tags]").fill("road=G205\njust a word")
            async with page.expect_response(_posted) as posted:
                await form.locator("button[type=submit]").click()
            assert (await posted.value).status == 400
            assert await page.locator("#metadata-error").inner_text() == "标签第 2 行应为 键=值。"
            assert "just a word" in await form.locator("textarea[name=tags]").input_value()
            assert (await registry.devices_by_id())[pole_n].pole == "P-north-07"

            # two people at once: the form saves only the fields this one changed
            await page.goto(f"/devices/{pole_n}")
            await meta.locator("summary").click()
            patched = await hub.api.patch(
                f"/api/v1/devices/{pole_n}", json={"mount_position": "arm-9"}
            )
            assert patched.status_code == 200, patched.text
            await form.locator("textarea[name=tags]").fill("road=G205\ncircuit=C4")
            await form.locator("button[type=submit]").click()
            await page.wait_for_url(f"**/devices/{pole_n}?saved=tags*")
            row = (await registry.devices_by_id())[pole_n]
            assert (row.mount_position, row.tags) == ("arm-9", {"road": "G205", "circuit": "C4"})

            # another site's pole does not exist for them; a forged site moves nothing
            response = await page.goto(f"/devices/{pole_s}")
            assert response is not None and response.status == 404
            await page.goto(f"/devices/{pole_n}")
            fields = {"pole": "P-x", "mount_position": "", "lat": "", "lon": "", "tags": ""}
            south = await _csrf_post(tech, page, base, f"/devices/{pole_s}/metadata", fields)
            assert south.status_code == 404
            forged = await _csrf_post(
                tech, page, base, f"/devices/{pole_n}/metadata", fields | {"site": "south"}
            )
            assert forged.status_code == 303
            devices = await registry.devices_by_id()
            assert (devices[pole_n].site, devices[pole_n].pole) == ("north", "P-x")
            assert devices[pole_s].pole == "P-south-01"

            # -- an operator: the metadata, no form, 403 posting it -----------------------
            ops = await browser_context(browser, base, foreign, "zh-CN")
            opage = await ops.new_page()
            await sign_in(opage, "ops")
            await opage.goto(f"/devices/{pole_n}")
            assert await opage.locator("#metadata [data-meta=pole]").inner_text() == "P-x"
            assert await opage.locator("#metadata-form, #metadata details").count() == 0
            denied = await _csrf_post(
                ops, opage, base, f"/devices/{pole_n}/metadata", fields | {"pole": "P-ops"}
            )
            assert denied.status_code == 403
            assert (await registry.devices_by_id())[pole_n].pole == "P-x"

            # -- the chart: the lamp's dimming level and its power, two units, two axes ----
            await opage.locator("#chart canvas").first.wait_for()
            first = await _chart(opage, ["dimming"])
            assert first["axes"] == 1 and first["points"] > 200  # the hour seeded, and now
            await opage.locator("#chart-form input[name=also][value=power]").check()
            chart = await _chart(opage, ["dimming", "power"])
            assert chart["units"] == ["%", "W"] and chart["axes"] == 2
            assert await opage.locator("#chart .u-legend .u-series").count() == 3  # time + 2
            await opage.select_option("#chart-form select[name=aggregate]", "max")

            async def maxima() -> bool | None:
                drawn = await opage.evaluate("() => window.hubChart")
                return True if drawn["aggregate"] == "max" and drawn["points"] else None

            await eventually(maxima)
            await opage.screenshot(path=shots / "device-desktop.png", full_page=True)
            await opage.locator("#history").screenshot(path=shots / "device-chart.png")
            history = f"/devices/{pole_n}/history.json"
            for query, reason in (
                ("point=dimming&point=lamp_on", "no numeric point 'lamp_on'"),
                ("point=nope", "no numeric point 'nope'"),
                ("&".join(f"point={p}" for p in SEVEN_POINTS), "at most 6 points"),
            ):
                refused = await opage.request.get(f"{history}?{query}")
                assert refused.status == 422 and reason in await refused.text(), query
            month = await opage.request.get(f"{history}?point=dimming&point=power&hours=720")
            assert month.status == 200
            body = await month.json()
            assert [s["point"] for s in body["series"]] == ["dimming", "power"]
            assert body["window_s"] == 720 * 3600 / 300 and 1 <= len(body["times"]) <= 3
            assert all(len(s["values"]) == len(body["times"]) for s in body["series"])
            wide = await _plot_width(opage)
            await opage.set_viewport_size({"width": 760, "height": 800})

            async def narrower() -> float | None:
                width = await _plot_width(opage)
                return width if width < wide - 200 else None

            assert await eventually(narrower) <= 760

            # -- on a phone: the chart fits the screen, nothing scrolls sideways -----------
            phone = await browser_context(
                browser, base, foreign, "zh-CN", viewport=PHONE, has_touch=True, is_mobile=True
            )
            ppage = await phone.new_page()
            await sign_in(ppage, "north-tech")
            await ppage.goto(f"/devices/{pole_n}")
            await ppage.locator("#chart-form input[name=also][value=power]").check()
            await _chart(ppage, ["dimming", "power"])
            assert await _plot_width(ppage) <= PHONE["width"] - 32
            scroll = await ppage.evaluate("() => document.documentElement.scrollWidth")
            assert scroll <= PHONE["width"], scroll
            await ppage.locator("#history").screenshot(path=shots / "device-phone-chart.png")
            await ppage.locator("#metadata summary").click()
            await ppage.locator("#metadata").screenshot(path=shots / "device-phone-metadata.png")
            await ppage.screenshot(path=shots / "device-phone.png", full_page=True)
            for context in (tech, ops, phone):
                await context.close()
    finally:
        await registry.close()
    assert foreign == []
