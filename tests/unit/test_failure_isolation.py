"""Failures of any type: the driver boundary translates them, the agent isolates them per device."""

from __future__ import annotations

import asyncio
import termios

import pytest
from structlog.testing import capture_logs

from device_profiles import DeviceProfile, Value, load_builtin_profile
from device_profiles.wire import CommandRequest, CommandResult
from drivers import DriverError, DriverTimeout, ModbusTcpSettings, UnexpectedDriverError
from drivers.fake import FakeDriver
from edge_agent.commands.executor import CommandExecutor
from edge_agent.outbox.memory import Outbox
from edge_agent.polling.devices import DeviceRuntime
from edge_agent.polling.poller import DevicePoller
from edge_agent.settings import DeviceConfig

pytestmark = pytest.mark.unit

ARBITRARY: list[Exception] = [
    termios.error(22, "Invalid argument"),
    ValueError("bad literal"),
    RuntimeError("confused"),
    KeyError("register"),
    TypeError("unsupported operand"),
    ZeroDivisionError("division by zero"),
    AttributeError("no attribute"),
    AssertionError(),
    NotImplementedError(),
]


def _profile() -> DeviceProfile:
    return load_builtin_profile("smart_pole")


def _config(device_id: str) -> DeviceConfig:
    return DeviceConfig(
        device_id=device_id,
        profile="smart_pole",
        connection=ModbusTcpSettings(host="127.0.0.1"),
        poll_interval_s=0.01,
    )


@pytest.mark.parametrize("exc", ARBITRARY, ids=lambda e: type(e).__name__)
async def test_the_driver_boundary_lets_only_driver_errors_out(exc: Exception) -> None:
    driver = FakeDriver(_profile(), endpoint="fake://pole")
    driver.fail_next_read(exc)
    driver.fail_next_write(exc)
    with pytest.raises(UnexpectedDriverError) as read_error:
        await driver.read(["voltage"])
    assert read_error.value.__cause__ is exc and read_error.value.original is exc
    assert str(read_error.value).startswith(f"fake://pole: read failed: {type(exc).__name__}: ")
    with pytest.raises(UnexpectedDriverError, match="write dimming failed") as write_error:
        await driver.write("dimming", 40)
    assert write_error.value.__cause__ is exc
    assert await driver.read(["voltage"]) == {"voltage": 0}  # the driver works again


async def test_driver_errors_and_cancellation_pass_the_boundary_unchanged() -> None:
    driver = FakeDriver(_profile())
    timeout = DriverTimeout("no answer")
    driver.fail_next_read(timeout)
    with pytest.raises(DriverTimeout) as caught:
        await driver.read(["voltage"])
    assert caught.value is timeout
    driver.fail_next_read(asyncio.CancelledError())  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await driver.read(["voltage"])


class _BrokenRuntime(DeviceRuntime):
    """A device whose agent-side conversion fails (past the driver boundary): a bug."""

    error: Exception = RuntimeError("scaling bug")

    async def read_values(self, names: list[str]) -> dict[str, Value]:
        raise self.error

    async def write_value(self, name: str, value: Value) -> None:
        raise self.error


@pytest.mark.parametrize("exc", ARBITRARY, ids=lambda e: type(e).__name__)
async def test_the_poller_survives_any_exception_and_marks_the_device_unavailable(
    exc: Exception,
) -> None:
    outbox = Outbox(agent_id="a1")
    broken = _BrokenRuntime(_config("broken"), _profile(), FakeDriver(_profile()))
    broken.error = exc
    healthy = DeviceRuntime(_config("healthy"), _profile(), FakeDriver(_profile()))
    pollers = [DevicePoller(broken, outbox), DevicePoller(healthy, outbox)]
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(p.run()) for p in pollers]
            try:
                async with asyncio.timeout(10):
                    while pollers[0].errors < 3 or pollers[1].polls < 3:
                        assert not any(t.done() for t in tasks)
                        await asyncio.sleep(0.01)  # a pace for checking, not a settle
            finally:
                for task in tasks:
                    task.cancel()
    assert pollers[0].online is False and pollers[0].polls == 0
    assert pollers[1].online is True
    # logged once with its traceback, then quietly while the device stays unavailable
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1 and errors[0]["exc_info"] is exc
    assert errors[0]["device_id"] == "broken"


@pytest.mark.parametrize("exc", ARBITRARY, ids=lambda e: type(e).__name__)
async def test_a_command_failing_with_any_exception_is_reported_failed(exc: Exception) -> None:
    outbox = Outbox(agent_id="a1")
    broken = _BrokenRuntime(_config("pole-1"), _profile(), FakeDriver(_profile()))
    broken.error = exc
    executor = CommandExecutor({"pole-1": broken}, outbox, clock_ms=lambda: 1)
    request = CommandRequest.model_validate(
        {
            "command_id": "c1",
            "device_id": "pole-1",
            "name": "set_dimming",
            "params": {"level": 40},
            "issued_at": 0,
        }
    )
    with capture_logs() as logs:
        await executor.handle(request)  # raises nothing
    assert [e["exc_info"] for e in logs if e["log_level"] == "error"] == [exc]
    results = []
    while outbox._control:
        item = await outbox.next()
        outbox.ack(item)
        assert isinstance(item.message, CommandResult)
        results.append(item.message)
    assert [r.status for r in results] == ["delivered", "failed"]
    assert results[-1].detail.startswith(f"unexpected error: {type(exc).__name__}")


def test_unexpected_driver_error_is_a_driver_error() -> None:
    assert issubclass(UnexpectedDriverError, DriverError)
