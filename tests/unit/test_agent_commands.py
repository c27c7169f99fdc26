"""The agent's command executor: validated at the edge, verified, idempotent, expiry-aware."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_profiles import Value, load_builtin_profile, parse_profile
from device_profiles.wire import CommandRequest, CommandResult
from drivers import DriverTimeout, ModbusTcpSettings
from drivers.fake import FakeDriver
from edge_agent.commands.executor import CommandExecutor
from edge_agent.commands.journal import CommandJournal
from edge_agent.outbox.memory import Outbox
from edge_agent.polling.devices import DeviceRuntime
from edge_agent.settings import DeviceConfig

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000


def _setup(per_minute: int = 30) -> tuple[CommandExecutor, FakeDriver, Outbox]:
    profile = load_builtin_profile("smart_pole")
    driver = FakeDriver(profile)
    config = DeviceConfig(
        device_id="pole-1",
        profile="smart_pole",
        connection=ModbusTcpSettings(host="127.0.0.1"),
        commands_per_minute=per_minute,
    )
    outbox = Outbox(agent_id="a1")
    device = DeviceRuntime(config, profile, driver)
    return CommandExecutor({"pole-1": device}, outbox, clock_ms=lambda: NOW), driver, outbox


def _request(name: str, params: dict[str, object] | None = None, **kw: object) -> CommandRequest:
    fields: dict[str, object] = {
        "command_id": kw.pop("command_id", "c1"),
        "device_id": "pole-1",
        "name": name,
        "params": params or {},
        "issued_at": NOW - 10,
        **kw,
    }
    return CommandRequest.model_validate(fields)


async def _results(outbox: Outbox) -> list[CommandResult]:
    out = []
    while outbox._control:
        item = await outbox.next()
        outbox.ack(item)
        assert isinstance(item.message, CommandResult)
        out.append(item.message)
    return out


async def test_set_dimming_writes_the_level_then_the_relay_and_verifies() -> None:
    executor, driver, outbox = _setup()
    await executor.handle(_request("set_dimming", {"level": 40}))
    assert [(w.name, w.raw) for w in driver.writes] == [("dimming", 40), ("lamp_on", True)]
    results = await _results(outbox)
    assert [r.status for r in results] == ["delivered", "succeeded"]
    assert results[-1].detail == "wrote and verified dimming=40, lamp_on=True"


async def test_set_dimming_zero_switches_the_lamp_off_and_keeps_the_level() -> None:
    executor, driver, outbox = _setup()
    driver.set("lamp_on", True)
    driver.set("dimming", 70)
    await executor.handle(_request("set_dimming", {"level": 0}))
    assert [(w.name, w.raw) for w in driver.writes] == [("lamp_on", False)]
    assert driver.values["dimming"] == 70  # the next lamp_on comes back at 70 %
    assert [r.status for r in await _results(outbox)] == ["delivered", "succeeded"]


@pytest.mark.parametrize(
    ("name", "params", "reason"),
    [
        ("set_dimming", {"level": 140}, "above the maximum"),
        ("set_dimming", {"level": "high"}, "must be an int"),
        ("format_disk", {}, "unknown command"),
        ("set_dimming", {"level": 10, "register": 5}, "takes no parameter"),
    ],
)
async def test_bad_commands_are_refused_at_the_edge_and_nothing_is_written(
    name: str, params: dict[str, object], reason: str
) -> None:
    executor, driver, outbox = _setup()
    await executor.handle(_request(name, params))
    assert driver.writes == []
    [result] = await _results(outbox)
    assert result.status == "rejected"
    assert reason in result.detail


async def test_expired_command_never_executes() -> None:
    executor, driver, outbox = _setup()
    await executor.handle(_request("lamp_off", expires_at=NOW - 1))
    assert driver.writes == []
    assert [r.status for r in await _results(outbox)] == ["expired"]


async def test_duplicate_command_id_executes_once_and_reports_again() -> None:
    executor, driver, outbox = _setup()
    await executor.handle(_request("set_dimming", {"level": 30}))
    await executor.handle(_request("set_dimming", {"level": 30}))
    assert len(driver.writes) == 2  # one run: the level and the relay
    assert [r.status for r in await _results(outbox)] == ["delivered", "succeeded", "succeeded"]


async def test_driver_failure_is_reported_as_failed() -> None:
    executor, driver, outbox = _setup()
    driver.fail_next_write(DriverTimeout("no answer from pole-1"))
    await executor.handle(_request("lamp_on"))
    results = await _results(outbox)
    assert results[-1].status == "failed"
    assert "no answer" in results[-1].detail


async def test_unknown_device_is_rejected() -> None:
    executor, _, outbox = _setup()
    request = _request("lamp_on").model_copy(update={"device_id": "pole-9"})
    await executor.handle(request)
    [result] = await _results(outbox)
    assert result.status == "rejected"


async def test_per_device_rate_limit() -> None:
    executor, driver, outbox = _setup(per_minute=2)
    for i in range(3):
        await executor.handle(_request("lamp_on", command_id=f"c{i}"))
    finals = [r for r in await _results(outbox) if r.status != "delivered"]
    assert [r.status for r in finals] == ["succeeded", "succeeded", "rejected"]
    assert "rate limited" in finals[-1].detail
    assert len(driver.writes) == 2


async def test_command_ids_stay_idempotent_across_a_restart(tmp_path: Path) -> None:
    executor, driver, outbox = _setup()
    executor = CommandExecutor(
        executor.devices, outbox, clock_ms=lambda: NOW, journal=CommandJournal(tmp_path / "j.jsonl")
    )
    await executor.handle(_request("set_dimming", {"level": 30}, command_id="once"))
    executor.journal.started("died-mid-way")  # type: ignore[union-attr]  # a crash between start and result
    executor.journal.close()  # type: ignore[union-attr]
    await _results(outbox)

    restarted = CommandExecutor(
        executor.devices, outbox, clock_ms=lambda: NOW, journal=CommandJournal(tmp_path / "j.jsonl")
    )
    await restarted.handle(_request("set_dimming", {"level": 30}, command_id="once"))
    await restarted.handle(_request("lamp_off", command_id="died-mid-way"))
    results = await _results(outbox)
    assert [(r.command_id, r.status) for r in results] == [
        ("once", "succeeded"),
        ("died-mid-way", "failed"),
    ]
    assert "interrupted by an agent restart" in results[1].detail
    assert len(driver.writes) == 2  # the first run's level and relay; neither ran again
    restarted.journal.close()  # type: ignore[union-attr]


async def test_what_a_command_read_back_is_reported_at_once_even_unchanged() -> None:
    executor, driver, outbox = _setup()
    device = executor.devices["pole-1"]
    driver.set("lamp_on", True)
    # the poller reported lamp_on True a moment ago: unchanged, it would stay silent
    assert device.changes.select({"lamp_on": True}, NOW - 1000) == {"lamp_on": True}
    assert device.changes.select({"lamp_on": True}, NOW - 500) == {}
    await executor.handle(_request("lamp_on"))
    assert [r.status for r in await _results(outbox)] == ["delivered", "succeeded"]
    [reading] = list(outbox._readings)
    assert (reading.device_id, reading.ts, reading.values) == ("pole-1", NOW, {"lamp_on": True})
    # recorded as reported: the next unchanged poll stays silent again
    assert device.changes.select({"lamp_on": True}, NOW + 500) == {}


async def test_a_momentary_write_reads_and_reports_the_point_confirming_it() -> None:
    profile = load_builtin_profile("barrier_gate")
    driver = FakeDriver(profile, {"state": 2})  # already open
    config = DeviceConfig(
        device_id="gate-1",
        profile="barrier_gate",
        connection=ModbusTcpSettings(host="127.0.0.1"),
    )
    outbox = Outbox(agent_id="a1")
    executor = CommandExecutor(
        {"gate-1": DeviceRuntime(config, profile, driver)}, outbox, clock_ms=lambda: NOW
    )
    request = _request("open").model_copy(update={"device_id": "gate-1"})
    await executor.handle(request)
    final = (await _results(outbox))[-1]
    assert final.status == "succeeded"
    assert final.detail == "wrote and verified command=1 (momentary, confirmed by state=2)"
    assert driver.reads == [("state",)]  # the command register itself is never read back
    [reading] = list(outbox._readings)
    assert reading.values == {"state": 2}


async def test_a_momentary_write_the_device_does_not_act_on_fails_with_why() -> None:
    """Closing is refused while a vehicle is on the loop: the state stays open (2)."""
    data = _gate_document()
    data["commands"]["close"]["writes"][0]["confirm"]["within_s"] = 0.3
    profile = parse_profile(data, "barrier_gate.yaml")
    driver = FakeDriver(profile, {"state": 2})
    config = DeviceConfig(
        device_id="gate-1",
        profile="barrier_gate",
        connection=ModbusTcpSettings(host="127.0.0.1"),
    )
    outbox = Outbox(agent_id="a1")
    executor = CommandExecutor(
        {"gate-1": DeviceRuntime(config, profile, driver)}, outbox, clock_ms=lambda: NOW
    )
    await executor.handle(_request("close").model_copy(update={"device_id": "gate-1"}))
    final = (await _results(outbox))[-1]
    assert final.status == "failed"
    assert final.detail == "command=2 not confirmed: state reads 2 after 0.3 s, expected 3 or 0"
    assert len(driver.reads) > 1  # read again until within_s passed


async def test_a_device_that_takes_a_moment_to_act_is_confirmed_when_it_does() -> None:
    profile = load_builtin_profile("barrier_gate")
    driver = FakeDriver(profile, {"state": 0})
    config = DeviceConfig(
        device_id="gate-1",
        profile="barrier_gate",
        connection=ModbusTcpSettings(host="127.0.0.1"),
    )
    outbox = Outbox(agent_id="a1")
    executor = CommandExecutor(
        {"gate-1": DeviceRuntime(config, profile, driver)}, outbox, clock_ms=lambda: NOW
    )
    reads = 0
    read = driver.read

    async def slow_controller(names: Sequence[str]) -> dict[str, Value]:
        nonlocal reads
        reads += 1
        if reads == 3:  # the controller starts the boom only a little after the write
            driver.set("state", 1)
        return await read(names)

    driver.read = slow_controller  # type: ignore[method-assign]
    await executor.handle(_request("open").model_copy(update={"device_id": "gate-1"}))
    final = (await _results(outbox))[-1]
    assert final.status == "succeeded", final.detail
    assert final.detail == "wrote and verified command=1 (momentary, confirmed by state=1)"
    [reading] = list(outbox._readings)
    assert reading.values == {"state": 1}


def _gate_document() -> dict[str, Any]:
    text = (Path(__file__).parents[2] / "device_profiles/profiles/barrier_gate.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data
