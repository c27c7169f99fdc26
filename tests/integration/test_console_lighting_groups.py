"""The console's lighting edits and group commands in a real browser (Debian's Chromium driven
by Playwright), against a real hub, Mosquitto, and an edge agent polling three simulated poles
(two of site south, one of north).

Lighting: an operator edits a strategy's step (the timeline follows; a bad step is refused with
the API's reason and the typed values kept), disables it (greyed, a badge, nothing in its
week), enables it, applies it now (its firing links to the group's page), deletes it after the
confirmation (audited as ``user:ops``); a viewer has no buttons and gets 403 posting anyway; a
north operator edits north's strategy but never sees south's (404 for its page and its forms).

Group commands: the operator sends ``set_dimming 40`` to the poles of south from /commands
while their agent is away, the group's page shows it pending, and once the agent is back the
bar reaches 100 % succeeded without a reload (``groups.js``) and both poles' dimming register
reads 40; a level out of range is refused with the profile's reason; the unfinished commands of
a group are cancelled from its page; a viewer has no form and gets 403; a north operator sees
neither a south group in the list nor its page (404). No request leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page
from sqlalchemy import update

from cloud_hub.registry import DeviceRow, Registry
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from firmware_sim import SmartPoleSim, run_smart_pole
from iot_runtime.mqtt import MqttSettings
from tests.harness.browser import browser_context, create_people, sign_in
from tests.helpers import (
    RunningHub,
    devices_registered,
    eventually,
    hub_settings,
    pole_agent_settings,
    running_hub,
)

pytestmark = pytest.mark.integration

PHONE = {"width": 390, "height": 844}


@dataclass
class Rig:
    hub: RunningHub
    base: str
    sims: dict[str, SmartPoleSim]
    agent_settings: AgentSettings
    foreign: list[str] = field(default_factory=list)
    agent: asyncio.Task[None] | None = None

    def start_agent(self) -> None:
        assert self.agent is None
        self.agent = asyncio.create_task(Agent(self.agent_settings).run())

    async def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.cancel()
            await asyncio.gather(self.agent, return_exceptions=True)
            self.agent = None

    async def person(self, browser: Browser, username: str, **options: Any) -> Page:
        context = await browser_context(browser, self.base, self.foreign, "zh-CN", **options)
        page = await context.new_page()
        await sign_in(page, username)
        await page.wait_for_url(f"{self.base}/")
        return page

    async def api_json(self, path: str) -> Any:
        return (await self.hub.api.get(path)).json()


@contextlib.asynccontextmanager
async def rig(private_mosquitto: Any, tmp_path: Path, unique_id: str) -> AsyncIterator[Rig]:
    """The hub, and an agent polling poles south-1, south-2 (site south) and north-1 (north)."""
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    sites = {f"south-1-{unique_id}": "south", f"south-2-{unique_id}": "south"}
    sites[f"north-1-{unique_id}"] = "north"
    mqtt = MqttSettings(host=private_mosquitto.host, port=private_mosquitto.port)
    async with contextlib.AsyncExitStack() as stack:
        sims = {
            device_id: await stack.enter_async_context(run_smart_pole(seed=i, port=0, tick_s=None))
            for i, device_id in enumerate(sites)
        }
        agent_settings = pole_agent_settings(
            f"agent-{unique_id}", mqtt, sims, tmp_path / "agent", 0.3
        )
        hub = await stack.enter_async_context(running_hub(settings))
        the_rig = Rig(hub, str(hub.api.base_url), sims, agent_settings)
        the_rig.start_agent()
        stack.push_async_callback(the_rig.stop_agent)
        await devices_registered(hub.api, list(sites))
        registry = Registry(settings.registry_url)
        await registry.start()
        try:
            async with registry.session.begin() as db:
                for device_id, site in sites.items():
                    await db.execute(
                        update(DeviceRow).where(DeviceRow.device_id == device_id).values(site=site)
                    )
        finally:
            await registry.close()
        yield the_rig
    assert the_rig.foreign == []


async def raw_post(page: Page, path: str, data: dict[str, str]) -> httpx.Response:
    """A form posted by hand with the page's session and CSRF token (no button needed)."""
    csrf = await page.locator("header input[name=csrf_token]").get_attribute("value")
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(page.url))
    async with httpx.AsyncClient(base_url=origin, cookies=cookies) as raw:
        return await raw.post(path, data={"csrf_token": csrf or "", **data})


async def close(*pages: Page) -> None:
    contexts: set[BrowserContext] = {p.context for p in pages}
    for context in contexts:
        await context.close()


async def timeline(page: Page, strategy_id: str) -> list[str]:
    card = page.locator(f"section[data-strategy='{strategy_id}']")
    return [t.strip() for t in await card.locator(".timeline li time").all_inner_texts()]


async def test_strategies_are_edited_disabled_enabled_and_deleted_from_the_console(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    async with rig(private_mosquitto, tmp_path, unique_id) as r:
        page = await r.person(browser, "ops")
        await page.goto("/lighting")
        new = page.locator("#new-strategy form")
        await new.locator("input[name=name]").fill("south nights")
        await new.locator("input[name=site]").fill("south")
        for i, (at, level) in enumerate((("18:00", 100), ("23:00", 30), ("06:00", 0))):
            await new.locator(f"input[name=at_{i}]").fill(at)
            await new.locator(f"input[name=level_{i}]").fill(str(level))
        await new.locator("button[type=submit]").click()
        await page.wait_for_url("**/lighting#strategy-*")
        strategy_id = page.url.rsplit("#strategy-", 1)[1]
        path = f"/lighting/{strategy_id}"

        # its page, from the list's link: the edit form holds the strategy as it is
        card = page.locator(f"section[data-strategy='{strategy_id}']")
        assert await card.locator("button[type=submit]").count() == 1  # apply now, only
        await card.locator("a.edit-link").click()
        await page.wait_for_url(f"**{path}#edit")
        assert "23:00" in await timeline(page, strategy_id)
        edit = page.locator("#edit")
        await edit.locator("summary").click()
        form = edit.locator("form")
        assert await form.locator("input[name=name]").input_value() == "south nights"
        assert await form.locator("input[name=site]").input_value() == "south"
        assert await form.locator("input[name=at_1]").input_value() == "23:00"
        assert await form.locator("input[name=level_1]").input_value() == "30"
        assert await form.locator("input[name=day_sun]").is_checked()

        # a bad step: refused with the API's reason, the typed values kept, nothing changed
        await form.locator("input[name=at_0]").fill("25:99")
        await form.locator("input[name=level_1]").fill("25")
        await form.locator("button[type=submit]").click()
        reason = await page.locator("p.error").inner_text()
        assert "25:99" in reason and "neither a clock time" in reason, reason
        assert await form.locator("input[name=at_0]").input_value() == "25:99"
        assert await form.locator("input[name=level_1]").input_value() == "25"
        assert await edit.get_attribute("open") is not None
        stored = await r.api_json(f"/api/v1/lighting/strategies/{strategy_id}")
        assert [s["at"] for s in stored["steps"]] == ["18:00", "23:00", "06:00"]

        # the step moved: the timeline follows
        await form.locator("input[name=at_0]").fill("18:00")
        await form.locator("input[name=at_1]").fill("22:15")
        await form.locator("input[name=level_1]").fill("20")
        await form.locator("button[type=submit]").click()
        await page.wait_for_url(f"**{path}?done=saved")
        times = await timeline(page, strategy_id)
        assert "22:15" in times and "23:00" not in times, times
        assert len(times) >= 20
        stored = await r.api_json(f"/api/v1/lighting/strategies/{strategy_id}")
        assert stored["steps"][1] == {
            "at": "22:15",
            "command": "set_dimming",
            "params": {"level": 20},
        }
        assert stored["enabled"] is True and stored["selector"] == {"site": "south"}
        await page.locator("#edit summary").click()
        await page.screenshot(path=shots / "lighting-edit.png", full_page=True)

        # disabled: greyed, a badge, nothing in its week; the list shows the same
        await page.locator("form.toggle button[type=submit]").click()
        await page.wait_for_url(f"**{path}?done=disabled_now")
        card = page.locator(f"section[data-strategy='{strategy_id}']")
        assert await card.get_attribute("data-enabled") == "false"
        assert "is-disabled" in (await card.get_attribute("class") or "")
        assert await card.locator(".badge-off").inner_text() == "已停用"
        assert await timeline(page, strategy_id) == []
        assert (await r.api_json(f"/api/v1/lighting/strategies/{strategy_id}"))["enabled"] is False
        await page.goto("/lighting")
        assert await card.locator(".badge-off").count() == 1
        assert await timeline(page, strategy_id) == []
        await page.screenshot(path=shots / "lighting-disabled.png", full_page=True)

        # enabled again, then applied now: the firing links to its group's progress
        await page.goto(path)
        await page.locator("form.toggle button[type=submit]").click()
        await page.wait_for_url(f"**{path}?done=enabled_now")
        assert await card.get_attribute("data-enabled") == "true"
        assert len(await timeline(page, strategy_id)) >= 20
        await card.locator(f"form[action^='/lighting/{strategy_id}/apply-now'] button").click()
        await page.wait_for_url(f"**{path}#firings")
        firing = card.locator(".firings tr[data-firing]").first
        assert "apply_now" in await firing.inner_text()
        await firing.locator("a.group-link").click()
        await page.wait_for_url("**/commands/*")
        group_id = page.url.rsplit("/", 1)[1]
        applied = await r.api_json(f"/api/v1/command-groups/{group_id}")
        assert applied["selector"] == {"site": "south"} and applied["total"] == 2
        await page.locator("#group [data-group-progress][data-done=true]").wait_for(
            timeout=20_000
        )  # followed live by groups.js
        replaced = await r.api_json("/api/v1/audit?action=lighting_strategy.replace")
        assert {e["actor"] for e in replaced["items"]} == {"user:ops"}
        assert len(replaced["items"]) == 3  # the edit, disabling, enabling

        # a viewer: no forms, and 403 when posting anyway
        eve = await r.person(browser, "eve")
        await eve.goto(path)
        assert await eve.locator("main form").count() == 0
        await eve.goto("/lighting")
        assert await eve.locator("main form").count() == 0
        assert await eve.locator(f"section[data-strategy='{strategy_id}']").count() == 1
        for action, data in (
            ("edit", {"name": "x", "site": "south", "at_0": "10:00"}),
            ("enabled", {"enabled": "false"}),
            ("delete", {"confirm": "yes"}),
        ):
            denied = await raw_post(eve, f"{path}/{action}", data)
            assert denied.status_code == 403, action

        # north's operator: south's strategy does not exist for them; north's they edit
        north = await r.person(browser, "north-ops")
        await north.goto("/lighting")
        assert await north.locator(f"section[data-strategy='{strategy_id}']").count() == 0
        response = await north.goto(path)
        assert response is not None and response.status == 404
        await north.goto("/lighting")
        for action, data in (
            ("edit", {"name": "mine now", "at_0": "10:00"}),
            ("enabled", {"enabled": "false"}),
            ("delete", {"confirm": "yes"}),
            ("apply-now", {}),
        ):
            hidden = await raw_post(north, f"{path}/{action}", data)
            assert hidden.status_code == 404, action
        stored = await r.api_json(f"/api/v1/lighting/strategies/{strategy_id}")
        assert stored["name"] == "south nights" and stored["enabled"] is True
        mine = north.locator("#new-strategy form")
        await mine.locator("input[name=name]").fill("north nights")
        await mine.locator("input[name=at_0]").fill("19:00")
        await mine.locator("input[name=level_0]").fill("80")
        await mine.locator("button[type=submit]").click()
        await north.wait_for_url("**/lighting#strategy-*")
        north_id = north.url.rsplit("#strategy-", 1)[1]
        await north.goto(f"/lighting/{north_id}")
        await north.locator("#edit summary").click()
        await north.locator("#edit input[name=at_0]").fill("19:30")
        await north.locator("#edit button[type=submit]").click()
        await north.wait_for_url(f"**/lighting/{north_id}?done=saved")
        theirs = await r.api_json(f"/api/v1/lighting/strategies/{north_id}")
        assert theirs["selector"] == {"site": "north"} and theirs["steps"][0]["at"] == "19:30"

        # deleted, after the confirmation only
        await page.goto(path)
        unconfirmed = await raw_post(page, f"{path}/delete", {})
        assert unconfirmed.status_code == 400
        assert (await r.hub.api.get(f"/api/v1/lighting/strategies/{strategy_id}")).is_success
        await page.locator("#delete summary").click()
        await page.locator("#delete input[name=confirm]").check()
        await page.screenshot(path=shots / "lighting-delete.png", full_page=True)
        await page.locator("#delete button[type=submit]").click()
        await page.wait_for_url("**/lighting?done=deleted")
        assert await page.locator(f"section[data-strategy='{strategy_id}']").count() == 0
        gone = await r.hub.api.get(f"/api/v1/lighting/strategies/{strategy_id}")
        assert gone.status_code == 404
        deleted = await r.api_json("/api/v1/audit?action=lighting_strategy.delete")
        assert [(e["actor"], e["target"]) for e in deleted["items"]] == [
            ("user:ops", f"lighting_strategy:{strategy_id}")
        ]
        await close(page, eve, north)


async def _progress(page: Page) -> dict[str, str]:
    """The group page's bar as groups.js leaves it (polled from outside: the page's CSP
    forbids the eval that wait_for_function uses)."""
    found: dict[str, str] = await page.evaluate(
        """() => {
            const bar = document.querySelector('#group [data-group-progress]');
            return {done: bar.dataset.done, percent: bar.dataset.percent,
                    succeeded: bar.dataset.succeededPercent,
                    updates: String(window.hubGroups ? hubGroups.updates : 0),
                    marker: String(window.sameDocument === true)};
        }"""
    )
    return found


async def test_a_group_command_is_sent_from_the_console_and_followed_live(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    async with rig(private_mosquitto, tmp_path, unique_id) as r:
        south = [d for d in r.sims if d.startswith("south")]
        north_pole = next(d for d in r.sims if d.startswith("north"))
        north_dimming = r.sims[north_pole].image.get("dimming")
        page = await r.person(browser, "ops")
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.click("nav a[href='/commands']")
        assert await page.locator("#groups tr[data-group]").count() == 0

        # the two steps: a command of the profile, then its fields (groups.js: at once)
        choose = page.locator("#group-choose")
        async with page.expect_navigation():
            await choose.locator("select[name=command]").select_option("lamp_off")
        assert "command=lamp_off" in page.url
        assert await page.locator("#group-send input[name=level]").count() == 0
        async with page.expect_navigation():
            await choose.locator("select[name=command]").select_option("set_dimming")
        send = page.locator("#group-send")

        # out of range: refused with the profile's reason, the typed values kept
        await send.locator("select[name=site]").select_option("south")
        await send.locator("input[name=level]").evaluate("e => e.removeAttribute('max')")
        await send.locator("input[name=level]").fill("140")
        await send.locator("button[type=submit]").click()
        assert "above the maximum 100" in await page.locator("p.error").inner_text()
        assert await send.locator("input[name=level]").input_value() == "140"
        assert await send.locator("select[name=site]").input_value() == "south"
        assert (await r.api_json("/api/v1/command-groups")) == []
        # every pole of the county, unconfirmed: refused, nothing sent
        await send.locator("select[name=site]").select_option("")
        await send.locator("input[name=level]").fill("40")
        await send.locator("button[type=submit]").click()
        assert "请勾选确认" in await page.locator("p.error").inner_text()
        assert (await r.api_json("/api/v1/command-groups")) == []
        await send.locator("select[name=site]").select_option("south")

        # the agent is away: the group waits, shown pending
        await r.stop_agent()
        await send.locator("input[name=level]").fill("40")
        await send.locator("button[type=submit]").click()
        await page.wait_for_url("**/commands/*")
        group_id = page.url.rsplit("/", 1)[1]
        await page.evaluate("() => { window.sameDocument = true; }")
        shown = await _progress(page)
        assert shown["done"] == "false" and shown["succeeded"] == "0", shown
        assert await page.locator("#group-commands tr[data-command]").count() == 2
        assert await page.locator("#group-cancel button").count() == 1
        await page.screenshot(path=shots / "group-pending.png", full_page=True)

        # back: the bar reaches 100 % succeeded on the same page, and the poles read 40
        r.start_agent()

        async def finished() -> dict[str, str] | None:
            now = await _progress(page)
            return now if now["succeeded"] == "100" else None

        shown = await eventually(finished, timeout=40)
        assert shown["done"] == "true" and shown["percent"] == "100"
        assert int(shown["updates"]) >= 1 and shown["marker"] == "true"  # no reload
        assert all(r.sims[d].image.get("dimming") == 40 for d in south)
        assert r.sims[north_pole].image.get("dimming") == north_dimming
        statuses = await page.locator("#group-commands .cmd-status").all_inner_texts()
        assert statuses == ["成功", "成功"]
        assert await page.locator("#group-cancel").count() == 0  # nothing left to cancel
        assert "成功 2" in await page.locator("#group .gcounts").inner_text()
        await page.screenshot(path=shots / "group.png", full_page=True)
        group = await r.api_json(f"/api/v1/command-groups/{group_id}")
        assert group["by_status"] == {"succeeded": 2} and group["selector"] == {
            "site": "south",
            "profile": "smart_pole",
        }
        audit = await r.api_json("/api/v1/audit?action=command_group.send")
        assert [(e["actor"], e["detail"]["params"]) for e in audit["items"]] == [
            ("user:ops", {"level": 40})
        ]

        # cancelled from its page while the agent is away again
        await r.stop_agent()
        await page.goto("/commands")
        send = page.locator("#group-send")
        await send.locator("input[name=device_ids]").fill(", ".join(south))
        await send.locator("input[name=level]").fill("10")
        await send.locator("button[type=submit]").click()
        await page.wait_for_url("**/commands/*")
        waiting_id = page.url.rsplit("/", 1)[1]
        listing = await page.context.new_page()  # the list follows its running groups too
        await listing.goto("/commands")
        waiting_bar = f"[data-group-progress='{waiting_id}']"
        assert await listing.locator(waiting_bar).get_attribute("data-done") == "false"
        await page.locator("#group-cancel button").click()
        await page.wait_for_url(f"**/commands/{waiting_id}?cancelled=2")
        shown = await _progress(page)
        assert shown["done"] == "true" and shown["succeeded"] == "0", shown
        cancelled = await r.api_json(f"/api/v1/command-groups/{waiting_id}")
        assert cancelled["by_status"] == {"cancelled": 2}

        async def listed_done() -> bool | None:
            done = await listing.evaluate(
                f'() => document.querySelector("{waiting_bar}").dataset.done'
            )
            return True if done == "true" else None

        await eventually(listed_done)
        assert "已取消 2" in await listing.locator(waiting_bar).inner_text()
        await listing.close()
        cancels = await r.api_json("/api/v1/audit?action=command_group.cancel")
        assert [(e["actor"], e["detail"]["cancelled"]) for e in cancels["items"]] == [
            ("user:ops", 2)
        ]

        await page.goto("/commands")
        rows = page.locator("#groups tr[data-group]")
        assert [await row.get_attribute("data-group") for row in await rows.all()] == [
            waiting_id,
            group_id,
        ]
        done = rows.filter(has=page.locator(f"[data-group-progress='{group_id}']"))
        assert await done.locator("[data-succeeded-percent='100']").count() == 1
        await page.screenshot(path=shots / "groups.png", full_page=True)

        # on a phone, without JavaScript: the counts are there (a reload follows them)
        phone = await r.person(browser, "ops", viewport=PHONE, java_script_enabled=False)
        await phone.goto(f"/commands/{group_id}")
        assert "100 %" in await phone.locator("#group .gcounts").inner_text()
        await phone.screenshot(path=shots / "group-phone.png", full_page=True)
        await phone.goto("/commands")
        await phone.screenshot(path=shots / "groups-phone.png", full_page=True)

        # a viewer: no form, no cancel, and 403 when posting anyway
        eve = await r.person(browser, "eve")
        await eve.goto("/commands")
        assert await eve.locator("#new-group").count() == 0
        assert await eve.locator("#groups tr[data-group]").count() == 2
        await eve.goto(f"/commands/{group_id}")
        assert await eve.locator("#group-cancel").count() == 0
        form = {"profile": "smart_pole", "command": "set_dimming", "site": "south", "level": "5"}
        assert (await raw_post(eve, "/commands", form)).status_code == 403
        assert (await raw_post(eve, f"/commands/{group_id}/cancel", {})).status_code == 403

        # north's operator: no south group in the list, nor its page, nor its progress
        north = await r.person(browser, "north-ops")
        await north.goto("/commands")
        assert await north.locator("#groups tr[data-group]").count() == 0
        assert await north.locator("#group-send select[name=site]").count() == 0  # fixed
        response = await north.goto(f"/commands/{group_id}")
        assert response is not None and response.status == 404
        progress = await north.request.get(f"/commands/{group_id}/progress.json")
        assert progress.status == 404
        await north.goto("/commands")
        assert (await raw_post(north, f"/commands/{group_id}/cancel", {})).status_code == 404
        refused = await raw_post(north, "/commands", form)  # another site: the API's 403
        assert refused.status_code == 403 and "limited to site" in refused.text
        ours = await raw_post(north, "/commands", form | {"site": "north"})
        assert ours.status_code == 303
        await north.goto("/commands")
        assert await north.locator("#groups tr[data-group]").count() == 1
        assert errors == []
        await close(page, phone, eve, north)
