"""The operators' console in a real browser (Debian's Chromium driven by Playwright), against
a real hub, Mosquitto, and an edge agent polling simulated poles.

Signing in (wrong password refused; the login form's CSRF token), the overview's figures per
site, the devices list filtered and paged by the registry, an ``agent_offline`` alarm
acknowledged from the page and audited as the person, a viewer without action buttons (and 403
if it posts anyway), a site-scoped person who never sees another site's device, a form without
the CSRF token refused, signing out. No page loads anything from a host other than the hub.
Screenshots go to ``$CONSOLE_SCREENSHOTS`` (default: the test's temporary directory).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page
from sqlalchemy import update

from cloud_hub.alarms.models import AlarmRow
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from edge_agent.agent import Agent
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness.browser import PASSWORD, browser_context, create_people, sign_in
from tests.helpers import (
    devices_registered,
    eventually,
    hub_settings,
    pole_agent_settings,
    poles_behind_an_agent,
    running_hub,
)

pytestmark = pytest.mark.integration


async def test_the_console_signs_in_shows_scopes_and_acknowledges_as_the_person(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    registry = Registry(settings.registry_url)
    await registry.start()
    agent_id = f"agent-{unique_id}"
    pole_n, pole_s = f"pole-n-{unique_id}", f"pole-s-{unique_id}"
    foreign: list[str] = []
    mqtt = MqttSettings(host=private_mosquitto.host, port=private_mosquitto.port)
    try:
        async with (
            running_hub(settings) as hub,
            poles_behind_an_agent(mqtt, tmp_path / "agent", agent_id, [pole_n, pole_s]) as poles,
        ):
            await devices_registered(hub.api, [pole_n, pole_s])
            async with registry.session.begin() as db:  # sites, as provisioning sets them
                for device_id, site in ((pole_n, "north"), (pole_s, "south")):
                    await db.execute(
                        update(DeviceRow)
                        .where(DeviceRow.device_id == device_id)
                        .values(site=site, pole=f"P-{site}-01", mount_position="top")
                    )
                # north's pole has been in service for a while: its poll plan is counted
                await db.execute(
                    update(DeviceRow)
                    .where(DeviceRow.device_id == pole_n)
                    .values(created_at=utcnow() - timedelta(hours=1))
                )
            base = str(hub.api.base_url)

            async def reporting() -> bool | None:  # the hub has noted their readings
                devices = (await hub.api.get("/api/v1/devices")).json()
                return True if all(d["last_seen"] for d in devices) else None

            await eventually(reporting)

            async def collected() -> DeviceRow | None:  # the hub counted north's readings
                row = (await registry.devices_by_id())[pole_n]
                return row if row.collect_count > 0 else None

            counted = await eventually(collected)
            assert counted.reading_interval_s == 60  # the agent's birth: on change, max_silent_s

            # -- the operator, in Chinese (the browser's language) --------------------------
            ops = await browser_context(browser, base, foreign, "zh-CN")
            page = await ops.new_page()
            await sign_in(page, "ops", "wrong password!")
            assert "用户名或密码错误" in await page.inner_text("main")
            await page.screenshot(path=shots / "login.png")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/")
            headers = (await page.request.get("/")).headers
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["cache-control"] == "no-store"
            text = await page.inner_text("main")
            assert "总览" in text and "数据采集率" in text and "north" in text and "south" in text
            rates = await page.locator("table.rates tbody tr").all_inner_texts()
            assert len(rates) == 2 and all(r.count("100.0 %") >= 1 for r in rates), rates
            north_rate = page.locator("table.rates tbody tr").first.locator("td").nth(2)
            assert float(await north_rate.get_attribute("data-collected") or 0) > 0
            assert float(await north_rate.get_attribute("data-expected") or 0) > 0
            assert "%" in await north_rate.inner_text()
            south_rate = page.locator("table.rates tbody tr").nth(1).locator("td").nth(2)
            # registered just now: not counted yet
            assert (await south_rate.inner_text()).strip() == "-"
            await page.screenshot(path=shots / "overview.png", full_page=True)

            await page.goto("/devices")
            assert await page.locator("#devices tbody tr[data-device]").count() == 2
            await page.select_option("select[name=site]", "north")
            await page.click(".filters button[type=submit]")
            rows = page.locator("#devices tbody tr[data-device]")
            assert await rows.count() == 1
            assert await rows.first.get_attribute("data-device") == pole_n
            await page.goto("/devices")
            await page.screenshot(path=shots / "devices.png", full_page=True)

            # an alarm: the agent goes away (its Last Will), the page shows it
            await poles.stop_agent()

            async def alarm_row() -> Any:
                await page.goto("/alarms")
                row = page.locator("#alarms tbody tr[data-alarm]")
                return row.first if await row.count() else None

            row = await eventually(alarm_row, timeout=30)
            assert "agent_offline" in await row.inner_text()
            assert await row.locator(".rule-title").inner_text() == "边缘代理离线"
            assert (await row.locator("td.duration").inner_text()).endswith(("s", "min"))
            await page.screenshot(path=shots / "alarms.png", full_page=True)
            # filters: by severity (agent_offline is major) and by device
            await page.select_option("select[name=severity]", "critical")
            await page.click(".filters button[type=submit]")
            assert "severity=critical" in page.url
            assert await page.locator("#alarms tbody tr[data-alarm]").count() == 0
            await page.goto("/alarms?severity=major")
            assert await page.locator("#alarms tbody tr[data-alarm]").count() == 1
            await page.goto(f"/alarms?device={pole_n}")  # an agent's alarm names no device
            assert await page.locator("#alarms tbody tr[data-alarm]").count() == 0
            await page.goto("/alarms")
            row = page.locator("#alarms tbody tr[data-alarm]").first
            alarm_id = await row.get_attribute("data-alarm")
            await row.locator("input[name=note]").fill("crew sent")
            await row.locator("button[type=submit]").click()
            await page.goto("/alarms?state=acknowledged")
            acked = page.locator(f"tr[data-alarm='{alarm_id}']")
            assert await acked.locator(".acked-by").inner_text() == "ops"
            audit = (
                await hub.api.get("/api/v1/audit", params={"action": "alarm.acknowledge"})
            ).json()
            assert [e["actor"] for e in audit["items"]] == ["user:ops"]

            # a form without its CSRF token: refused, nothing done
            cookies = {c["name"]: c["value"] for c in await ops.cookies()}
            async with httpx.AsyncClient(base_url=base, cookies=cookies) as raw:
                refused = await raw.post(f"/alarms/{alarm_id}/acknowledge", data={"note": "x"})
                assert refused.status_code == 403
                forged = await raw.post("/logout", data={"csrf_token": "guessed"})
                assert forged.status_code == 403

            # -- a viewer, in English: no action buttons, 403 when posting anyway ---------
            viewer_ctx = await browser_context(browser, base, foreign, "en-GB")
            vpage = await viewer_ctx.new_page()
            await sign_in(vpage, "eve")
            await vpage.wait_for_url(f"{base}/")
            assert "Collection rate" in await vpage.inner_text("main")
            await vpage.goto("/alarms?state=acknowledged")
            assert await vpage.locator("form.ack").count() == 0
            await vpage.screenshot(path=shots / "alarms-viewer-en.png", full_page=True)
            csrf = await vpage.locator("header input[name=csrf_token]").get_attribute("value")
            vcookies = {c["name"]: c["value"] for c in await viewer_ctx.cookies()}
            async with httpx.AsyncClient(base_url=base, cookies=vcookies) as raw:
                denied = await raw.post(
                    f"/alarms/{alarm_id}/acknowledge", data={"csrf_token": csrf, "note": "x"}
                )
                assert denied.status_code == 403

            # -- a site-scoped operator: never another site's device -----------------------
            north_ctx = await browser_context(browser, base, foreign, "zh-CN")
            npage = await north_ctx.new_page()
            await sign_in(npage, "north-ops")
            await npage.wait_for_url(f"{base}/")
            assert "south" not in await npage.inner_text("main")
            tiles = await npage.locator(".tile .big").all_inner_texts()
            assert tiles[1].replace(" ", "").endswith("/1"), tiles  # north's one device only
            for url in ("/devices", "/devices?site=south", f"/devices?q={pole_s}"):
                await npage.goto(url)
                shown = npage.locator("#devices tbody tr[data-device]")
                assert [await r.get_attribute("data-device") for r in await shown.all()] in (
                    [pole_n],
                    [],
                ), url
            await npage.screenshot(path=shots / "devices-site-scoped.png", full_page=True)

            # -- a technician's phone, with JavaScript off: the pages still work -----------
            phone = await browser_context(
                browser,
                base,
                foreign,
                "zh-CN",
                viewport={"width": 390, "height": 844},
                java_script_enabled=False,
            )
            ppage = await phone.new_page()
            await sign_in(ppage, "ops")
            await ppage.goto("/devices")
            assert await ppage.locator("#devices tbody tr[data-device]").count() == 2
            await ppage.goto("/alarms?state=acknowledged")
            assert await ppage.locator("#alarms tbody tr[data-alarm]").count() == 1
            await ppage.screenshot(path=shots / "alarms-phone.png", full_page=True)
            await phone.close()

            # -- signing out ends the session ----------------------------------------------
            await page.goto("/")
            await page.click("header button[type=submit]")
            await page.wait_for_url("**/login**")
            await page.goto("/devices")
            assert "/login" in page.url
            async with httpx.AsyncClient(base_url=base, cookies=cookies) as raw:
                after = await raw.get("/devices")
                assert after.status_code == 303  # the old cookie is worth nothing now
            for context in (ops, viewer_ctx, north_ctx):
                await context.close()
    finally:
        await registry.close()
    assert foreign == []


async def test_the_device_page_shows_live_values_and_runs_a_command_to_succeeded(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    device_id = f"pole-{unique_id}"
    foreign: list[str] = []
    mqtt = MqttSettings(host=private_mosquitto.host, port=private_mosquitto.port)
    async with (
        run_smart_pole(seed=3, port=0, tick_s=None) as sim,
        running_hub(settings) as hub,
    ):
        agent = Agent(
            pole_agent_settings(
                f"agent-{unique_id}", mqtt, {device_id: sim}, tmp_path / "agent", 0.3
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            await devices_registered(hub.api, [device_id])
            base = str(hub.api.base_url)
            ops = await browser_context(browser, base, foreign, "zh-CN")
            page = await ops.new_page()
            await sign_in(page, "ops")
            await page.wait_for_url(f"{base}/")
            voltage = page.locator('[data-point="voltage"]')

            async def shows_values() -> bool | None:
                await page.goto(f"/devices/{device_id}")
                return True if await voltage.count() else None

            await eventually(shows_values)
            sim.model.force("voltage", 236.0)  # the page follows without a reload
            await voltage.filter(has_text="236.0 V").wait_for(timeout=15_000)

            # the history chart (uPlot, vendored): the pole's power over the last hour
            await page.locator("#chart canvas").first.wait_for()

            async def charted() -> int | None:
                n = await page.evaluate("() => window.hubChart ? hubChart.points : 0")
                return n if n else None

            assert await eventually(charted) >= 1
            await page.select_option("#chart-form select[name=point]", "voltage")

            async def voltage_charted() -> bool | None:
                point = await page.evaluate("() => window.hubChart && hubChart.point")
                return True if point == "voltage" else None

            await eventually(voltage_charted)
            bad = await page.request.get(f"/devices/{device_id}/history.json?point=nope")
            assert bad.status == 422

            form = page.locator("form[data-command-form=set_dimming]")
            await form.locator("input[name=level]").fill("40")
            await form.locator("button[type=submit]").click()
            await page.wait_for_url(f"**/devices/{device_id}#command-*")
            command_id = page.url.rsplit("#command-", 1)[1]
            status = page.locator(f"[data-command='{command_id}'] .cmd-status")
            await status.filter(has_text="成功").wait_for(timeout=20_000)
            assert sim.image.get("dimming") == 40
            await (
                page.locator('[data-point="dimming"]')
                .filter(has_text="40%")
                .wait_for(timeout=15_000)
            )
            await page.screenshot(path=shots / "device.png", full_page=True)
            audit = (await hub.api.get("/api/v1/audit", params={"action": "command.send"})).json()
            assert [(e["actor"], e["detail"]["params"]) for e in audit["items"]] == [
                ("user:ops", {"level": 40})
            ]

            # the one-key alarm pressed: the open alarms page shows it live, with its cue
            alarms_page = await ops.new_page()
            await alarms_page.goto("/alarms")
            await alarms_page.wait_for_timeout(500)  # its stream connected
            sim.model.force("one_key_alarm", True)
            row = alarms_page.locator("#alarms tr[data-alarm]").filter(has_text="one_key_alarm")
            await row.wait_for(timeout=20_000)
            await alarms_page.locator("#alarm-banner .alert-critical").wait_for()
            assert await row.locator(".rule-title").inner_text() == "一键报警"  # the profile's zh
            message = await row.locator(".alarm-message").inner_text()
            assert message == "一键报警按下 = true (== true)", message
            await alarms_page.screenshot(path=shots / "alarms-live-critical.png", full_page=True)
            await row.locator("input[name=note]").fill("on my way")
            await row.locator("button[type=submit]").click()
            await alarms_page.goto("/alarms?state=acknowledged")
            acked = alarms_page.locator("#alarms tr[data-alarm]").filter(has_text="one_key_alarm")
            assert await acked.locator(".acked-by").inner_text() == "ops"
            await alarms_page.close()

            # the agents page: the agent, its state
            await page.goto("/agents")
            agent_row = page.locator(f"#agents tr[data-agent='agent-{unique_id}']")
            assert "在线" in await agent_row.inner_text()
            await page.screenshot(path=shots / "agents.png", full_page=True)

            # lighting: a strategy created from the console's form, its week ahead previewed,
            # and apply-now reaching the pole
            await page.goto("/lighting")
            new = page.locator("#new-strategy form")
            await new.locator("input[name=name]").fill("ring road nights")
            await new.locator("input[name=device_ids]").fill(device_id)
            await new.locator("input[name=lat]").fill("31.23")
            await new.locator("input[name=lon]").fill("121.47")
            for i, (at, level) in enumerate((("sunset", 100), ("23:00", 30), ("sunrise", 0))):
                await new.locator(f"input[name=at_{i}]").fill(at)
                await new.locator(f"input[name=level_{i}]").fill(str(level))
            await new.locator("button[type=submit]").click()
            await page.wait_for_url("**/lighting#strategy-*")
            strategy_id = page.url.rsplit("#strategy-", 1)[1]
            created = (await hub.api.get(f"/api/v1/lighting/strategies/{strategy_id}")).json()
            assert [s["at"] for s in created["steps"]] == ["sunset", "23:00", "sunrise"]
            # a bad step is refused with the reason, nothing created
            await page.locator("#new-strategy summary").click()
            await new.locator("input[name=name]").fill("broken")
            await new.locator("input[name=device_ids]").fill(device_id)
            await new.locator("input[name=at_0]").fill("25:99")
            await new.locator("button[type=submit]").click()
            assert "at" in await page.locator("p.error").inner_text()
            assert len((await hub.api.get("/api/v1/lighting/strategies")).json()) == 1
            await page.goto("/lighting")
            card = page.locator(f"section[data-strategy='{strategy_id}']")
            assert await card.locator(".timeline .day").count() >= 7
            assert await card.locator(".timeline li").count() >= 20  # three steps a day
            assert "(sunset)" in await card.inner_text()  # the sun step, resolved to a time
            await card.locator("button[type=submit]").click()  # apply now
            await card.locator(".firings tr").filter(has_text="apply_now").wait_for()

            async def lamp_followed() -> bool | None:
                return (
                    True
                    if sim.image.get("dimming") in (100, 30) or not sim.image.get("lamp_on")
                    else None
                )

            await eventually(lamp_followed)
            await page.screenshot(path=shots / "lighting.png", full_page=True)
            audit = (
                await hub.api.get("/api/v1/audit", params={"action": "lighting_strategy.apply_now"})
            ).json()
            assert [e["actor"] for e in audit["items"]] == ["user:ops"]
            await page.goto(f"/devices/{device_id}")

            # out of range: refused with the profile's reason, nothing sent
            await form.locator("input[name=level]").evaluate("e => e.removeAttribute('max')")
            await form.locator("input[name=level]").fill("140")
            await form.locator("button[type=submit]").click()
            assert "above the maximum 100" in await page.inner_text("main")
            writes = len(sim.writes)

            # a viewer: no forms, and 403 when posting anyway
            vctx = await browser_context(browser, base, foreign, "zh-CN")
            vpage = await vctx.new_page()
            await sign_in(vpage, "eve")
            await vpage.goto(f"/devices/{device_id}")
            assert await vpage.locator("form.command").count() == 0
            csrf = await vpage.locator("header input[name=csrf_token]").get_attribute("value")
            cookies = {c["name"]: c["value"] for c in await vctx.cookies()}
            async with httpx.AsyncClient(base_url=base, cookies=cookies) as raw:
                denied = await raw.post(
                    f"/devices/{device_id}/commands/set_dimming",
                    data={"csrf_token": csrf, "level": "10"},
                )
                assert denied.status_code == 403
            # another site's person: the device does not exist for them, nor its stream
            nctx = await browser_context(browser, base, foreign, "zh-CN")
            npage = await nctx.new_page()
            await sign_in(npage, "north-ops")
            response = await npage.goto(f"/devices/{device_id}")
            assert response is not None and response.status == 404
            assert (await npage.request.get(f"/devices/{device_id}/live")).status == 404
            history = await npage.request.get(f"/devices/{device_id}/history.json?point=power")
            assert history.status == 404
            assert len(sim.writes) == writes  # nothing of the refused commands was written
            for context in (ops, vctx, nctx):
                await context.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert foreign == []


async def _map_ready(page: Page) -> None:
    """Until the map has drawn its markers (polled from outside: the page's CSP forbids the
    eval that wait_for_function uses)."""

    async def ready() -> bool | None:
        return True if await page.evaluate("() => !!(window.hubMap && hubMap.ready)") else None

    await eventually(ready)


async def _positioned_fleet(registry_url: str, count: int) -> None:
    """``count`` devices in a grid over north (lat 24.4, lon 118.1), one far south pole with a
    critical alarm, and one device without a position."""
    registry = Registry(registry_url)
    await registry.start()
    try:
        now = utcnow()
        async with registry.session.begin() as db:
            db.add(AgentRow(agent_id="agent-map", state="online", created_at=now))
            await db.flush()
            side = int(count**0.5) + 1
            for n in range(count):
                db.add(
                    DeviceRow(
                        device_id=f"lamp-{n:05d}", agent_id="agent-map", profile="smart_pole",
                        status="online" if n % 10 else "offline", site="north", created_at=now,
                        lat=24.40 + (n // side) * 0.0005, lon=118.10 + (n % side) * 0.0005,
                    )
                )  # fmt: skip
            db.add(
                DeviceRow(
                    device_id="far-pole", agent_id="agent-map", profile="smart_pole",
                    status="online", site="south", lat=24.20, lon=118.30, created_at=now,
                )
            )  # fmt: skip
            db.add(
                DeviceRow(
                    device_id="no-position", agent_id="agent-map", profile="smart_pole",
                    status="online", site="south", created_at=now,
                )
            )  # fmt: skip
            db.add(
                AlarmRow(
                    alarm_id="a-far", device_id="far-pole", agent_id="agent-map",
                    rule="one_key_alarm", severity="critical", state="active", raised_at=now,
                    message="one-key alarm pressed",
                )
            )  # fmt: skip
    finally:
        await registry.close()


async def test_the_map_draws_every_positioned_device_clusters_and_opens_a_panel(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    await _positioned_fleet(settings.registry_url, 2000)
    foreign: list[str] = []
    async with running_hub(settings) as hub:
        base = str(hub.api.base_url)
        ops = await browser_context(browser, base, foreign, "zh-CN")
        page = await ops.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await sign_in(page, "ops")
        await page.wait_for_url(f"{base}/")
        await page.goto("/map")
        await _map_ready(page)
        state = await page.evaluate(
            "({n: hubMap.state.devices.length, clusters: hubMap.state.clusters.length})"
        )
        assert state["n"] == 2001  # every positioned device, not the one without a position
        assert 1 < state["clusters"] < 200  # clustered at the zoom that shows them all
        assert await page.inner_text("#map-count") == "2001"
        far = await page.evaluate("hubMap.positionOf('far-pole')")
        await page.mouse.click(far["x"], far["y"])
        await page.locator("#map-panel[data-device=far-pole]").wait_for()
        assert "one-key alarm pressed" in await page.inner_text("#map-panel")
        # the panel's actions: a command sent from the map, through the device page's route
        dim = page.locator("#map-panel form[data-command=set_dimming]")
        await dim.locator("input[name=level]").fill("40")
        await dim.locator("button[type=submit]").click()
        status = page.locator("#map-panel .map-command-status[data-outcome]")
        await status.wait_for()
        assert await status.get_attribute("data-outcome") == "sent"
        sent = (await hub.api.get("/api/v1/audit", params={"action": "command.send"})).json()
        assert [(e["actor"], e["target"]) for e in sent["items"]] == [
            ("user:ops", "device:far-pole")
        ]
        await page.screenshot(path=shots / "map.png")
        await dim.locator("input[name=level]").evaluate(
            "e => { e.removeAttribute('max'); e.value = '140'; }"
        )
        await dim.locator("button[type=submit]").click()

        async def refused() -> str | None:
            text = await page.inner_text("#map-panel .map-command-status")
            return text if "maximum 100" in text else None

        await eventually(refused)
        crowd = await page.evaluate("hubMap.positionOf('lamp-01000')")
        await page.mouse.click(crowd["x"], crowd["y"])  # a cluster: zooms in on it
        assert await page.evaluate("hubMap.state.zoom") > await page.evaluate("0") + 1
        assert await page.evaluate("hubMap.state.clusters.length") > state["clusters"]
        await page.screenshot(path=shots / "map-zoomed.png")
        await page.click("#zoom-fit")
        assert errors == []

        # on a phone, two fingers pinch the map in and out (real touches through the browser)
        phone = await browser_context(
            browser,
            base,
            foreign,
            "zh-CN",
            viewport={"width": 390, "height": 844},
            has_touch=True,
            is_mobile=True,
        )
        ppage = await phone.new_page()
        await sign_in(ppage, "ops")
        await ppage.wait_for_url(f"{base}/")
        await ppage.goto("/map")
        await _map_ready(ppage)
        box = await ppage.locator("#map").bounding_box()
        assert box is not None
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        await ppage.screenshot(path=shots / "map-phone.png")
        touch = await phone.new_cdp_session(ppage)

        async def fingers(kind: str, spread: float) -> None:
            points = [{"x": cx - spread, "y": cy, "id": 1}, {"x": cx + spread, "y": cy, "id": 2}]
            await touch.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [] if kind == "touchEnd" else points},
            )

        before = await ppage.evaluate("hubMap.state.zoom")
        await fingers("touchStart", 20)
        for spread in range(30, 170, 10):  # fingers apart: about three doublings
            await fingers("touchMove", spread)
        await fingers("touchEnd", 0)
        pinched = await ppage.evaluate("hubMap.state.zoom")
        assert pinched >= before + 2, (before, pinched)
        await fingers("touchStart", 160)
        for spread in range(150, 30, -10):  # and together again
            await fingers("touchMove", spread)
        await fingers("touchEnd", 0)
        assert await ppage.evaluate("hubMap.state.zoom") < pinched
        await phone.close()

        # a viewer's panel has no actions
        viewer = await browser_context(browser, base, foreign, "en")
        vpage = await viewer.new_page()
        await sign_in(vpage, "eve")
        await vpage.wait_for_url(f"{base}/")
        await vpage.goto("/map")
        await _map_ready(vpage)
        await vpage.evaluate("hubMap.show('far-pole')")
        await vpage.locator("#map-panel[data-device=far-pole]").wait_for()
        assert await vpage.locator("#map-panel form").count() == 0
        await viewer.close()

        # a site-scoped person's map holds their site's devices only
        nctx = await browser_context(browser, base, foreign, "zh-CN")
        npage = await nctx.new_page()
        await sign_in(npage, "north-ops")
        await npage.wait_for_url(f"{base}/")
        await npage.goto("/map")
        await _map_ready(npage)
        assert await npage.evaluate("hubMap.state.devices.length") == 2000
        hidden = await npage.request.get("/map/devices/far-pole.json")
        assert hidden.status == 404
        for context in (ops, nctx):
            await context.close()
    assert foreign == []


async def test_admins_manage_accounts_in_the_console_within_their_site(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    foreign: list[str] = []
    async with running_hub(settings) as hub:
        base = str(hub.api.base_url)
        root = await browser_context(browser, base, foreign, "zh-CN")
        page = await root.new_page()
        await sign_in(page, "root")
        await page.wait_for_url(f"{base}/")
        await page.click("nav a[href='/users']")
        form = page.locator("form[action='/users']")
        await form.locator("input[name=username]").fill("south-tech")
        await form.locator("input[name=password]").fill("short")
        await form.locator("input[name=password]").evaluate("e => e.removeAttribute('minlength')")
        await form.locator("select[name=role]").select_option("technician")
        await form.locator("input[name=site]").fill("south")
        await form.locator("button[type=submit]").click()
        assert "at least 10 characters" in await page.inner_text("main")
        await form.locator("input[name=username]").fill("south-tech")
        await form.locator("input[name=password]").fill("a long new password")
        await form.locator("select[name=role]").select_option("technician")
        await form.locator("input[name=site]").fill("south")
        await form.locator("button[type=submit]").click()
        await page.locator("#users tr[data-user=south-tech]").wait_for()

        # root makes eve (a viewer) an operator: her session ends; signed in again, she is one
        eve = await browser_context(browser, base, foreign, "en-GB")
        epage = await eve.new_page()
        await sign_in(epage, "eve")
        await epage.wait_for_url(f"{base}/")
        assert "eve · viewer" in await epage.inner_text("header .who")
        erow = page.locator("#users tr[data-user=eve]")
        await erow.locator("select[name=role]").select_option("operator")
        await erow.locator("button[name=save]").click()
        assert "eve" in await page.inner_text("#saved")
        assert await erow.locator("select[name=role]").input_value() == "operator"
        await page.screenshot(path=shots / "users.png", full_page=True)
        await epage.goto("/devices")
        assert "/login" in epage.url  # her old session ended
        await sign_in(epage, "eve")
        await epage.wait_for_url(f"{base}/")
        assert "eve · operator" in await epage.inner_text("header .who")
        # her language alone: her session goes on (the page in Chinese now)
        await erow.locator("select[name=language]").select_option("zh")
        await erow.locator("button[name=save]").click()
        await page.locator("#saved").wait_for()
        await epage.goto("/devices")
        assert "/login" not in epage.url and await epage.get_attribute("html", "lang") == "zh-CN"
        # root cannot take his own admin role
        rrow = page.locator("#users tr[data-user=root]")
        await rrow.locator("select[name=role]").select_option("operator")
        async with page.expect_response(lambda r: r.request.method == "POST") as posted:
            await rrow.locator("button[name=save]").click()
        assert (await posted.value).status == 403
        assert "you would lock yourself out" in await page.inner_text("main [role=alert]")
        await page.goto("/users")
        assert "root · admin" in await page.inner_text("header .who")

        # the new person signs in; once disabled, they are signed out and refused
        tech = await browser_context(browser, base, foreign, "zh-CN")
        tpage = await tech.new_page()
        await sign_in(tpage, "south-tech", "a long new password")
        await tpage.wait_for_url(f"{base}/")
        assert await tpage.locator("nav a[href='/users']").count() == 0  # not an admin
        await page.locator("#users tr[data-user=south-tech] button[name=disable]").click()
        await page.locator("#users tr[data-user=south-tech] .bad").wait_for()
        await tpage.goto("/devices")
        assert "/login" in tpage.url
        await sign_in(tpage, "south-tech", "a long new password")
        assert "/login" in tpage.url  # refused

        # a north admin sees north's accounts only and creates north ones only
        north = await browser_context(browser, base, foreign, "zh-CN")
        npage = await north.new_page()
        await sign_in(npage, "north-admin")
        await npage.goto("/users")
        shown = {
            await r.get_attribute("data-user")
            for r in await npage.locator("#users tr[data-user]").all()
        }
        assert shown == {"north-ops", "north-admin", "north-tech"}, shown
        csrf = await npage.locator("header input[name=csrf_token]").get_attribute("value")
        cookies = {c["name"]: c["value"] for c in await north.cookies()}
        async with httpx.AsyncClient(base_url=base, cookies=cookies) as raw:
            other = await raw.post(
                "/users",
                data={"csrf_token": csrf, "username": "x", "password": "a long password",
                      "role": "admin", "site": "south"},
            )  # fmt: skip
            assert other.status_code == 403
            hidden = await raw.post("/users/south-tech/disable", data={"csrf_token": csrf})
            assert hidden.status_code == 404
            # another site's person (eve: of every site) cannot be changed; north's cannot
            # be moved to south (the form's site is fixed to north), but otherwise can
            change = {"csrf_token": csrf, "role": "viewer", "language": "en", "site": "north"}
            assert (await raw.post("/users/eve", data=change)).status_code == 404
            moved = await raw.post("/users/north-ops", data=change | {"site": "south"})
            assert moved.status_code == 403 and "limited to site" in moved.text
            assert (await raw.post("/users/north-ops", data=change)).status_code == 303
        fixed = npage.locator("#users tr[data-user=north-ops] input[name=site]")
        assert await fixed.get_attribute("type") == "hidden"
        # provisioning tokens: created with a site, the secret shown once, revoked
        await page.goto("/provisioning")
        tform = page.locator("form[action='/provisioning/tokens']")
        await tform.locator("input[name=site]").fill("south")
        await tform.locator("input[name=note]").fill("cabinet 7")
        await tform.locator("button[type=submit]").click()
        secret = await page.inner_text("#token-secret")
        assert len(secret) > 20
        await page.screenshot(path=shots / "provisioning.png", full_page=True)
        await page.goto("/provisioning")
        assert secret not in await page.content()  # shown once, never again
        row = page.locator("#tokens tr[data-token]").filter(has_text="cabinet 7")
        await row.locator("button[type=submit]").click()
        await (
            page.locator("#tokens tr[data-token]")
            .filter(has_text="cabinet 7")
            .locator(".bad")
            .wait_for()
        )
        claim = await hub.api.post(
            "/api/v1/provisioning/claim", json={"agent_id": "cab-7", "token": secret}
        )
        assert claim.status_code in (401, 403, 410), claim.text  # revoked: refused
        tech = await browser_context(browser, base, foreign, "zh-CN")
        techpage = await tech.new_page()
        await sign_in(techpage, "north-tech")
        await techpage.goto("/provisioning")
        assert "cabinet 7" not in await techpage.inner_text("main")  # another site's token
        csrf = await techpage.locator("header input[name=csrf_token]").get_attribute("value")
        tcookies = {c["name"]: c["value"] for c in await tech.cookies()}
        async with httpx.AsyncClient(base_url=base, cookies=tcookies) as raw:
            south = await raw.post(
                "/provisioning/tokens", data={"csrf_token": csrf, "site": "south"}
            )
            assert south.status_code == 403
        await tech.close()
        ops = await browser_context(browser, base, foreign, "zh-CN")
        opage = await ops.new_page()
        await sign_in(opage, "ops")
        response = await opage.goto("/provisioning")
        assert response is not None and response.status == 403  # operators do not provision
        await ops.close()

        # dead letters: a refused message, listed with its reason, replayed (refused again)
        mqtt = MqttSettings(host=private_mosquitto.host, port=private_mosquitto.port)
        async with make_client(mqtt, f"probe-{unique_id}", persistent_session=False) as probe:
            await probe.publish(f"iot/v1/dl-{unique_id}/telemetry", b"not json", qos=1)

        async def listed() -> Any:
            await page.goto("/dead-letters")
            rows = page.locator("#dead-letters tr[data-dead-letter]").filter(
                has_text=f"dl-{unique_id}"
            )
            return rows.first if await rows.count() else None

        letter = await eventually(listed)
        assert "Invalid JSON" in await letter.inner_text()
        await page.screenshot(path=shots / "dead-letters.png", full_page=True)
        await letter.locator("button[type=submit]").click()
        assert await page.locator("#replay-outcome").count() == 1
        replays = (
            await hub.api.get("/api/v1/audit", params={"action": "dead_letter.replay"})
        ).json()
        assert [e["actor"] for e in replays["items"]] == ["user:root"]

        audit = (await hub.api.get("/api/v1/audit", params={"action": "user.create"})).json()
        assert ("user:root", "user:south-tech") in {
            (e["actor"], e["target"]) for e in audit["items"]
        }
        updates = (await hub.api.get("/api/v1/audit", params={"action": "user.update"})).json()
        assert [(e["actor"], e["target"], e["detail"]) for e in updates["items"]] == [
            ("user:north-admin", "user:north-ops",
             {"before": {"role": "operator", "language": "zh"},
              "after": {"role": "viewer", "language": "en"}}),
            ("user:root", "user:eve", {"before": {"language": "en"}, "after": {"language": "zh"}}),
            ("user:root", "user:eve", {"before": {"role": "viewer"}, "after": {"role": "operator"}}),
        ]  # fmt: skip
        for context in (root, tech, north, eve):
            await context.close()
    assert foreign == []
