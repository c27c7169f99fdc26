"""The console's agent page and bulk provisioning in a real browser (Debian's Chromium driven
by Playwright), against a real hub, Mosquitto and an edge agent polling simulated poles.

The agent page: the health figures once the agent's first reports arrived, the devices behind
it, its remote configuration edited by an admin (invalid JSON refused with the reason and
nothing stored; a valid one shown pending, then applied when the agent reports), revocation
after the confirm step (the broker refuses the agent's credentials from then on; audited as
``user:root``), a person of another site who gets 404, an operator without forms who gets 403
posting anyway. Bulk provisioning: a technician of site north uploads a CSV, a row naming site
south is refused with its line, the tokens issued are confined to north and shown once, and an
agent claiming one shows up with its devices before any health report. No request leaves
loopback. Screenshots go to ``$CONSOLE_SCREENSHOTS`` (default: the test's temporary
directory).
"""

# ruff: noqa: RUF001  (Chinese text uses full-width punctuation)

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from cloud_hub.provisioning import DynsecAdminSettings, ProvisioningSettings
from device_profiles.wire import DesiredConfig, agent_client_id
from edge_agent.agent import Agent
from edge_agent.provision import claim
from firmware_sim import run_smart_pole
from iot_runtime.mqtt import MqttSettings, make_client
from tests.harness.browser import browser_context, create_people, sign_in
from tests.helpers import (
    devices_registered,
    eventually,
    hub_settings,
    pole_agent_settings,
    running_hub,
)

pytestmark = pytest.mark.integration


async def _signed_in(
    browser: Browser, base: str, foreign: list[str], username: str, lang: str, **options: Any
) -> tuple[BrowserContext, Page]:
    context = await browser_context(browser, base, foreign, lang, **options)
    page = await context.new_page()
    await sign_in(page, username)
    await page.wait_for_url(f"{base}/")
    return context, page


async def _raw(context: BrowserContext, page: Page, base: str) -> tuple[httpx.AsyncClient, str]:
    """An HTTP client with the person's session cookie, and their CSRF token."""
    csrf = await page.locator("header input[name=csrf_token]").get_attribute("value")
    assert csrf
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    return httpx.AsyncClient(base_url=base, cookies=cookies), csrf


def _device_json(device_id: str, port: int, poll_interval_s: float) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "profile": "smart_pole",
        "connection": {"transport": "modbus_tcp", "host": "127.0.0.1", "port": port},
        "poll_interval_s": poll_interval_s,
    }


async def test_the_agent_page_shows_health_edits_config_and_revokes(
    dynsec_broker: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(
        dynsec_broker.server,
        tmp_path,
        unique_id,
        mqtt=dynsec_broker.hub,
        provisioning=ProvisioningSettings(
            broker_admin=DynsecAdminSettings(
                username="admin", password=dynsec_broker.admin.password
            )
        ),
    )
    await create_people(settings)
    agent_id = f"cab-s-{unique_id}"
    pole_1, pole_2 = f"pole-s1-{unique_id}", f"pole-s2-{unique_id}"
    foreign: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        sim_1 = await stack.enter_async_context(run_smart_pole(seed=1, port=0, tick_s=None))
        sim_2 = await stack.enter_async_context(run_smart_pole(seed=2, port=0, tick_s=None))
        hub = await stack.enter_async_context(running_hub(settings))
        base = str(hub.api.base_url)

        # a provisioned agent of site south, with its own broker credentials
        token = await hub.api.post("/api/v1/provisioning/tokens", json={"site": "south"})
        assert token.status_code == 201, token.text
        devices = [{"device_id": d, "profile": "smart_pole"} for d in (pole_1, pole_2)]
        creds = await claim(base, token.json()["token"], agent_id, devices)
        mqtt = MqttSettings(
            host=creds.host, port=creds.port, username=creds.username, password=creds.password
        )
        agent = Agent(
            pole_agent_settings(
                agent_id,
                mqtt,
                {pole_1: sim_1, pole_2: sim_2},
                tmp_path / "agent",
                health_interval_s=0.5,
            )
        )
        # the agent applies a pushed configuration only once the test lets it (to see it
        # pending first)
        gate = asyncio.Event()
        apply = agent.uplink.on_config
        assert apply is not None

        async def gated(desired: DesiredConfig) -> object:
            await gate.wait()
            return await apply(desired)

        agent.uplink.on_config = gated
        task = asyncio.create_task(agent.run())
        try:
            await devices_registered(hub.api, [pole_1, pole_2])

            # -- root, in Chinese: the agents list links to the agent's page ---------------
            root, page = await _signed_in(browser, base, foreign, "root", "zh-CN")
            await page.goto("/agents")
            await page.click(f"#agents tr[data-agent='{agent_id}'] a")
            await page.wait_for_url(f"**/agents/{agent_id}")

            async def health_with_polls() -> bool | None:
                await page.reload()
                polls = page.locator("#agent-devices [data-figure=polls]")
                if await polls.count() != 2:
                    return None
                counts = [int(n) for n in await polls.all_inner_texts()]
                return True if all(counts) else None

            await eventually(health_with_polls)
            main = await page.inner_text("main")
            assert "运行时间" in main and "内存（常驻）" in main, main
            assert (await page.inner_text("[data-figure=rss]")).endswith(" MiB")
            assert " MiB" in await page.inner_text("[data-figure=buffer]")
            assert (await page.inner_text("[data-figure=cpu_seconds]")).endswith(" s")
            assert await page.inner_text("#agent-state") == "在线"
            for device_id in (pole_1, pole_2):
                row = page.locator(f"#agent-devices tr[data-device='{device_id}']")
                assert await row.locator(f"a[href='/devices/{device_id}']").count() == 1
                text = await row.inner_text()
                assert "smart_pole" in text and "是" in text and " ms" in text, text
                assert "0.0 %" in text, text  # no failed poll: 0 % errors

            async def cpu_over_an_interval() -> str | None:  # two reports seen: CPU % over it
                await page.reload()
                cpu = page.locator("[data-figure=cpu]")
                return await cpu.inner_text() if await cpu.get_attribute("data-over") else None

            cpu = await eventually(cpu_over_an_interval)
            assert "%" in cpu and "最近" in cpu, cpu
            await page.screenshot(path=shots / "agent.png", full_page=True)

            # -- remote configuration: invalid JSON refused, nothing stored ----------------
            assert await page.get_attribute("#config-state", "data-status") == "none"
            await page.click("#config summary")
            textarea = page.locator("#config-form textarea")
            await textarea.fill('{"devices": [')
            await page.click("#config-form button[type=submit]")
            error = await page.inner_text("#config-error")
            assert error.startswith("不是有效的 JSON：第 1 行第 14 列"), error
            assert await textarea.input_value() == '{"devices": ['  # the typed text kept
            await page.screenshot(path=shots / "agent-config-invalid.png", full_page=True)
            await textarea.fill("[1, 2]")  # JSON, but not an object: the API's model refuses
            await page.click("#config-form button[type=submit]")
            assert "config: Input should be a valid dictionary" in await page.inner_text(
                "#config-error"
            )
            nothing = await hub.api.get(f"/api/v1/agents/{agent_id}/config")
            assert nothing.status_code == 404, nothing.text

            # -- a new poll interval for the first pole: pending, then applied -------------
            wanted = {
                "devices": [
                    _device_json(pole_1, sim_1.port, 0.3),
                    _device_json(pole_2, sim_2.port, 0.5),
                ]
            }
            await textarea.fill(json.dumps(wanted, indent=2))
            await page.click("#config-form button[type=submit]")
            await page.wait_for_url(f"**/agents/{agent_id}#config")
            state = page.locator("#config-state")
            assert await state.get_attribute("data-version") == "1"
            assert await state.get_attribute("data-status") == "pending"
            assert "待应用" in await state.inner_text()
            assert '"poll_interval_s": 0.3' in await page.inner_text("#config-json")
            await page.screenshot(path=shots / "agent-config-pending.png", full_page=True)
            gate.set()

            async def applied() -> bool | None:
                await page.reload()
                return True if await state.get_attribute("data-status") == "applied" else None

            await eventually(applied)
            assert "已应用" in await state.inner_text()
            assert "1 device(s) started or changed" in await page.inner_text("#config-detail")
            assert agent.devices[pole_1].config.poll_interval_s == 0.3
            assert agent.devices[pole_2].config.poll_interval_s == 0.5
            audit = (await hub.api.get("/api/v1/audit", params={"action": "agent.config"})).json()
            assert [e["actor"] for e in audit["items"]] == ["user:root"]
            await page.screenshot(path=shots / "agent-config-applied.png", full_page=True)

            # -- an operator: the figures, no forms; 403 posting anyway ----------------------
            ops, opage = await _signed_in(browser, base, foreign, "ops", "zh-CN")
            await opage.goto(f"/agents/{agent_id}")
            assert await opage.locator("[data-figure=rss]").count() == 1
            assert await opage.locator("#config-form, #revoke-form").count() == 0
            raw, csrf = await _raw(ops, opage, base)
            async with raw:
                body = {"csrf_token": csrf, "config": json.dumps(wanted)}
                assert (await raw.post(f"/agents/{agent_id}/config", data=body)).status_code == 403
                body = {"csrf_token": csrf, "understood": "yes"}
                assert (await raw.post(f"/agents/{agent_id}/revoke", data=body)).status_code == 403
            await ops.close()
            # a viewer, in English
            eve, epage = await _signed_in(browser, base, foreign, "eve", "en-GB")
            await epage.goto(f"/agents/{agent_id}")
            text = await epage.inner_text("main")
            assert "Uptime" in text and "Memory (resident)" in text and "applied" in text, text
            assert "over the last" in await epage.inner_text("[data-figure=cpu]")
            assert await epage.locator("#config-form, #revoke-form").count() == 0
            await epage.screenshot(path=shots / "agent-viewer-en.png", full_page=True)
            await eve.close()

            # -- another site's people: 404, also by guessing the URL or posting ------------
            north, npage = await _signed_in(browser, base, foreign, "north-ops", "zh-CN")
            response = await npage.goto(f"/agents/{agent_id}")
            assert response is not None and response.status == 404
            await npage.goto("/agents")
            assert agent_id not in await npage.inner_text("main")
            await north.close()
            north, npage = await _signed_in(browser, base, foreign, "north-admin", "zh-CN")
            raw, csrf = await _raw(north, npage, base)
            async with raw:
                body = {"csrf_token": csrf, "config": json.dumps(wanted)}
                assert (await raw.post(f"/agents/{agent_id}/config", data=body)).status_code == 404
                body = {"csrf_token": csrf, "understood": "yes"}
                assert (await raw.post(f"/agents/{agent_id}/revoke", data=body)).status_code == 404
            await north.close()
            assert (await hub.api.get(f"/api/v1/agents/{agent_id}/config")).json()["version"] == 1

            # -- revocation: refused without the confirmation, then done -------------------
            raw, csrf = await _raw(root, page, base)
            async with raw:
                unconfirmed = await raw.post(
                    f"/agents/{agent_id}/revoke", data={"csrf_token": csrf}
                )
                assert unconfirmed.status_code == 400
                assert "请先勾选确认框" in unconfirmed.text
                forged = await raw.post(f"/agents/{agent_id}/revoke", data={"understood": "yes"})
                assert forged.status_code == 403  # no CSRF token
            revocations = {"action": "agent.revoke"}
            assert (await hub.api.get("/api/v1/audit", params=revocations)).json()["items"] == []
            await page.goto(f"/agents/{agent_id}")
            await page.check("#revoke-form input[name=understood]")
            await page.click("#revoke-form button[type=submit]")
            await page.wait_for_url(f"**/agents/{agent_id}#revocation")
            revoked_at = await page.inner_text("#revoked-at")
            assert revoked_at.startswith("已于 ") and revoked_at.endswith(" UTC 吊销"), revoked_at
            assert await page.locator("#revoke-form").count() == 0
            audit = (await hub.api.get("/api/v1/audit", params=revocations)).json()
            assert [(e["actor"], e["target"]) for e in audit["items"]] == [
                ("user:root", f"agent:{agent_id}")
            ]
            # the broker refuses the agent's credentials now
            with pytest.raises(aiomqtt.MqttCodeError):
                async with make_client(mqtt, agent_client_id(agent_id), persistent_session=False):
                    pass

            # the agent is disconnected and its reconnections refused (Not authorized)
            async def disconnected() -> bool | None:
                return True if not agent.uplink.connected.is_set() else None

            await eventually(disconnected)
            # Mosquitto's dynamic security kicks the client without its Will: the hub records
            # it offline itself, and raises agent_offline
            await page.reload()
            assert await page.get_attribute("#agent-state", "data-state") == "offline"
            assert await page.inner_text("#agent-revoked") == "已吊销"
            assert (await hub.api.get(f"/api/v1/agents/{agent_id}")).json()["state"] == "offline"

            async def offline_alarm() -> bool | None:
                alarms = (await hub.api.get("/api/v1/alarms", params={"state": "active"})).json()[
                    "items"
                ]
                found = [a for a in alarms if a["rule"] == "agent_offline"]
                return True if any(a["agent_id"] == agent_id for a in found) else None

            await eventually(offline_alarm)
            await page.screenshot(path=shots / "agent-revoked.png", full_page=True)

            # -- on a phone ----------------------------------------------------------------
            phone, ppage = await _signed_in(
                browser, base, foreign, "root", "zh-CN", viewport={"width": 390, "height": 844}
            )
            await ppage.goto(f"/agents/{agent_id}")
            assert await ppage.locator("#agent-devices tr[data-device]").count() == 2
            await ppage.screenshot(path=shots / "agent-phone.png", full_page=True)
            await phone.close()
            await root.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert foreign == []


BAD_CSV = """agent_id,device_id,profile,site
cab-n1-{u},pole-n1a-{u},smart_pole,
cab-n2-{u},pole-n2a-{u},smart_pole,south
"""
GOOD_CSV = """agent_id,device_id,profile,pole,mount_position,lat,lon,tags
cab-n1-{u},pole-n1a-{u},smart_pole,P-N1,top,31.23,121.47,road=ring
cab-n1-{u},pole-n1b-{u},smart_pole,P-N2,top,31.24,121.48,road=ring
cab-n2-{u},pole-n2a-{u},smart_pole,P-N3,top,31.25,121.49,
"""


async def test_bulk_provisioning_from_a_csv_upload_confined_to_the_site(
    private_mosquitto: Any, tmp_path: Path, unique_id: str, browser: Browser, shots: Path
) -> None:
    settings = hub_settings(private_mosquitto, tmp_path, unique_id)
    await create_people(settings)
    foreign: list[str] = []
    agent_n1, agent_n2 = f"cab-n1-{unique_id}", f"cab-n2-{unique_id}"
    async with running_hub(settings) as hub:
        base = str(hub.api.base_url)
        tech, page = await _signed_in(browser, base, foreign, "north-tech", "zh-CN")
        await page.goto("/provisioning")
        main = await page.inner_text("#bulk")
        assert "mount_position" in main and "agent_id,device_id,profile" in main

        async def upload(text: str, ttl_h: str = "") -> None:
            form = page.locator("#bulk-form")
            await form.locator("input[name=csv]").set_input_files(
                files=[{"name": "cabinets.csv", "mimeType": "text/csv", "buffer": text.encode()}]
            )
            await form.locator("input[name=ttl_h]").fill(ttl_h)
            await form.locator("button[type=submit]").click()
            await page.wait_for_load_state()

        # a row naming another site: the whole file refused, with the line
        await upload(BAD_CSV.format(u=unique_id))
        error = await page.inner_text("#bulk-error")
        assert "line 3, site: 'south' is outside your site 'north'" in error, error
        assert (await hub.api.get("/api/v1/provisioning/tokens")).json() == []
        await page.screenshot(path=shots / "bulk-provisioning-refused.png", full_page=True)

        # the file without it: one single-use token per agent, site north, shown once
        before = datetime.now(UTC)
        await upload(GOOD_CSV.format(u=unique_id), ttl_h="2")
        rows = page.locator("#bulk-tokens tr[data-bulk-agent]")
        assert [await r.get_attribute("data-bulk-agent") for r in await rows.all()] == [
            agent_n1,
            agent_n2,
        ]
        secrets = {
            await r.get_attribute("data-bulk-agent"): await r.locator("[data-secret]").inner_text()
            for r in await rows.all()
        }
        assert all(len(s) > 20 for s in secrets.values())
        for row in await rows.all():
            assert "north" in await row.inner_text()
        assert "之后不会再显示" in await page.inner_text("#bulk-issued")
        await page.screenshot(path=shots / "bulk-provisioning.png", full_page=True)
        tokens = (await hub.api.get("/api/v1/provisioning/tokens")).json()
        assert sorted((t["agent_id"], t["site"], t["max_uses"]) for t in tokens) == [
            (agent_n1, "north", 1),
            (agent_n2, "north", 1),
        ]
        assert {t["created_by"] for t in tokens} == {"user:north-tech"}
        for t in tokens:
            expires = datetime.fromisoformat(t["expires_at"])
            assert abs(expires - (before + timedelta(hours=2))) < timedelta(minutes=5), t
        await page.goto("/provisioning")
        content = await page.content()
        assert not any(s in content for s in secrets.values())  # never shown again

        # an agent claims its token: its page shows its devices before any health report
        claimed = await hub.api.post(
            "/api/v1/provisioning/claim", json={"agent_id": agent_n1, "token": secrets[agent_n1]}
        )
        assert claimed.status_code == 201, claimed.text
        # the same file again: refused (the first agent is provisioned now), nothing issued
        await upload(GOOD_CSV.format(u=unique_id))
        error = await page.inner_text("#bulk-error")
        assert f"agent '{agent_n1}' is already provisioned" in error, error
        every = {"include_inactive": "true"}
        assert len((await hub.api.get("/api/v1/provisioning/tokens", params=every)).json()) == 2
        north, npage = await _signed_in(browser, base, foreign, "north-ops", "en-GB")
        await npage.goto(f"/agents/{agent_n1}")
        shown = npage.locator("#agent-devices tr[data-device]")
        assert [await r.get_attribute("data-device") for r in await shown.all()] == [
            f"pole-n1a-{unique_id}",
            f"pole-n1b-{unique_id}",
        ]
        assert "smart_pole" in await shown.first.inner_text()
        assert await npage.locator("#no-health").count() == 1
        await north.close()

        # an operator does not provision: no page, and 403 posting anyway
        ops, opage = await _signed_in(browser, base, foreign, "ops", "zh-CN")
        response = await opage.goto("/provisioning")
        assert response is not None and response.status == 403
        await opage.goto("/")
        raw, csrf = await _raw(ops, opage, base)
        async with raw:
            refused = await raw.post(
                "/provisioning/bulk",
                data={"csrf_token": csrf},
                files={"csv": ("c.csv", GOOD_CSV.format(u="x"), "text/csv")},
            )
            assert refused.status_code == 403
        await ops.close()
        await tech.close()
    assert foreign == []
