"""On-site commissioning of one device through the hub: the checks a technician runs after
mounting and wiring a pole controller, meter or sensor, before leaving the site.

1. the hub knows the device (its agent announced it) — and where it is mounted;
2. its agent is online;
3. it reports: its newest reading is at most ``max_age_s`` old (a device reporting by
   exception sends unchanged values only now and then), or one arrives within the timeout;
4. each test command (``set_dimming level=40``…) succeeds — the agent verified it by reading
   the device back — and the telemetry the hub then receives shows the written values (when
   the profile is known here; the agent reports what it read back at once). A momentary
   point (a trigger the device clears, e.g. a gate's command register) is not kept by the
   device: the point its write names in ``confirm`` (the gate's ``state``) must show one of
   the values given there; without one, the agent's result is all there is to check;
5. no alarm of the device is active (a warning, not a failure: a tilt alarm may be why the
   technician is there).

Every check is recorded (PASS, FAIL, WARN, SKIP with the detail) for the commissioning
report; the device passes when no check failed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from device_profiles import (
    CommandRejected,
    DeviceProfile,
    PointWrite,
    ProfileError,
    Value,
    resolve_profile,
)
from iotctl.hub_client import HubClient, HubError

__all__ = ["Check", "Report", "TestCommand", "commission", "parse_test_command"]

Outcome = Literal["PASS", "FAIL", "WARN", "SKIP"]


@dataclass(frozen=True)
class TestCommand:
    name: str
    params: dict[str, Any]

    def __str__(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name} {args}".strip()


def _param_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_test_command(text: str) -> TestCommand:
    """``"set_dimming level=40"`` → TestCommand; ValueError saying what is wrong."""
    name, *args = text.split()
    params: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"{text!r}: parameters are name=value, got {arg!r}")
        params[key] = _param_value(value)
    return TestCommand(name, params)


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


@dataclass
class Report:
    device_id: str
    started_at: datetime
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.outcome != "FAIL" for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "started_at": self.started_at.isoformat(),
            "passed": self.passed,
            "checks": [c.__dict__ for c in self.checks],
        }


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _wait(probe: Callable[[], str | None], timeout_s: float, poll_s: float = 0.3) -> str | None:
    """Call ``probe`` until it returns a text or ``timeout_s`` passed (then None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found is not None or time.monotonic() > deadline:
            return found
        time.sleep(poll_s)


def commission(
    hub: HubClient,
    device_id: str,
    tests: Sequence[TestCommand] = (),
    timeout_s: float = 30.0,
    progress: Callable[[Check], None] = lambda _: None,
    max_age_s: float = 300.0,
) -> Report:
    """Run the checks; raises HubError only when the hub cannot be asked at all."""
    report = Report(device_id, datetime.now(UTC))

    def record(name: str, outcome: Outcome, detail: str) -> None:
        check = Check(name, outcome, detail)
        report.checks.append(check)
        progress(check)

    try:
        device = hub.device(device_id)
    except HubError as exc:
        if exc.status in (0, 401, 403):
            raise  # the hub could not be asked: no check ran
        record("registered", "FAIL", exc.detail)
        return report
    where = ", ".join(
        f"{k} {device[k]}" for k in ("site", "pole", "mount_position") if device.get(k)
    )
    record(
        "registered",
        "PASS",
        f"profile {device['profile']}, agent {device['agent_id']}"
        + (f", {where}" if where else ""),
    )
    try:
        agent = hub.agent(device["agent_id"])
        online = agent["state"] == "online"
        record("agent online", "PASS" if online else "FAIL", f"agent state: {agent['state']}")
    except HubError as exc:
        record("agent online", "FAIL", exc.detail)

    def fresh_reading() -> str | None:
        points = hub.latest(device_id)["points"]
        newest = max((_ts(p["ts"]) for p in points.values()), default=None)
        if newest is None:
            return None
        age_s = (datetime.now(UTC) - newest).total_seconds()
        if age_s > max_age_s:
            return None
        return f"{len(points)} points, newest read {max(0.0, age_s):.0f} s ago"

    found = _wait(fresh_reading, timeout_s)
    record(
        "reporting",
        "PASS" if found else "FAIL",
        found or f"no reading of the last {max_age_s:g} s, nor within {timeout_s:g} s",
    )
    profile: DeviceProfile | None = None
    with contextlib.suppress(ProfileError):  # a profile file on the hub, not here
        profile = resolve_profile(device["profile"])
    for test in tests:
        _run_test(hub, device_id, test, profile, timeout_s, record)
    try:
        active = hub.alarms(state="active", device_id=device_id)
    except HubError as exc:
        record("no active alarms", "WARN", f"alarms not readable: {exc.detail}")
    else:
        names = ", ".join(sorted({a["rule"] for a in active}))
        record("no active alarms", "WARN" if active else "PASS", names or "none")
    return report


def _run_test(
    hub: HubClient,
    device_id: str,
    test: TestCommand,
    profile: DeviceProfile | None,
    timeout_s: float,
    record: Callable[[str, Outcome, str], None],
) -> None:
    name = f"command {test}"
    sent_at = datetime.now(UTC)
    try:
        row = hub.send_command(device_id, test.name, test.params)
        row = hub.wait_command(row["command_id"], timeout_s)
    except HubError as exc:
        record(name, "FAIL", exc.detail)
        return
    if row["status"] != "succeeded":
        record(name, "FAIL", f"{row['status']}: {row['detail']}".rstrip(": "))
        return
    if profile is None:
        record(name, "PASS", "succeeded (read back by the agent; profile not known here)")
        return
    try:
        writes = profile.resolve_command(test.name, test.params)
    except CommandRejected as exc:  # the hub took it: the local profile is another version
        record(name, "PASS", f"succeeded; not compared with telemetry ({exc.reason})")
        return
    expected = _expected(profile, writes)
    unseen = [
        f"{w.point}={w.value!r}"
        for w in writes
        if profile.points[w.point].momentary and w.confirm is None
    ]
    momentary = (
        f" ({', '.join(unseen)}: momentary, written by the agent; the profile names no point "
        "that shows it)"
        if unseen
        else ""
    )
    if not expected:
        record(name, "PASS", f"succeeded{momentary}")
        return

    def reported() -> str | None:
        points = hub.latest(device_id)["points"]
        for point, allowed in expected.items():
            got = points.get(point)
            if got is None or _ts(got["ts"]) < sent_at:
                return None
            if not any(_same(got["value"], value) for value in allowed):
                return None
        return ", ".join(_shown(profile, p, points[p]["value"]) for p in expected)

    shown = _wait(reported, timeout_s)
    if shown is None:
        wanted = ", ".join(
            f"{p} = {' or '.join(_label(profile, p, v) for v in allowed)}"
            for p, allowed in expected.items()
        )
        record(name, "FAIL", f"succeeded, but the hub's telemetry does not show {wanted}")
    else:
        record(name, "PASS", f"succeeded; telemetry shows {shown}{momentary}")


def _expected(profile: DeviceProfile, writes: Sequence[PointWrite]) -> dict[str, list[Value]]:
    """Point -> the values the hub's telemetry should then show: a written point its value;
    a momentary one (the device clears it) the values of the point confirming it, if any."""
    expected: dict[str, list[Value]] = {}
    for write in writes:
        if not profile.points[write.point].momentary:
            expected[write.point] = [write.value]
        elif write.confirm is not None:
            expected[write.confirm.point] = list(write.confirm.values)
    return expected


def _same(got: object, want: Value) -> bool:
    if isinstance(got, bool) or isinstance(want, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    return got == want


def _shown(profile: DeviceProfile, point: str, value: object) -> str:
    return f"{point} = {_label(profile, point, value)}"


def _label(profile: DeviceProfile, point: str, value: object) -> str:
    """``1 (opening)`` for a point with enum labels, ``40`` otherwise."""
    labels = profile.points[point].enum or {}
    label = labels.get(value) if isinstance(value, int) and not isinstance(value, bool) else None
    return f"{value!r}" + (f" ({label})" if label else "")
