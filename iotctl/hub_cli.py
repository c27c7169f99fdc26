"""``iotctl hub``: the hub's API from a terminal, for operators and technicians on site.

    export IOTCTL_HUB_URL=https://hub.city.example  IOTCTL_API_KEY=...
    iotctl hub devices --site ring-road
    iotctl hub show pole-0001
    iotctl hub command pole-0001 set_dimming level=40
    iotctl hub commission pole-0001 --test "set_dimming level=40" --test "set_dimming level=100"
    iotctl hub alarms --state active
    iotctl hub ack 6f1c... --note "crew dispatched"
    iotctl hub lighting                      # strategies and their next step
    iotctl hub lighting --preview 7d2e... --hours 24

Exit codes: 0 done (a command succeeded, a commissioning passed); 1 the hub answered but the
outcome is a failure (refused, failed, a check failed); 2 the hub could not be asked (not
reachable, not authorised, bad arguments).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from device_profiles.display import show_values
from iotctl.commissioning import Check, commission, parse_test_command
from iotctl.hub_client import HubClient, HubError
from iotctl.profiles_known import local_profile

__all__ = ["app"]

app = typer.Typer(
    help="The hub's API: devices, commands, alarms, commissioning.", no_args_is_help=True
)
out = Console(soft_wrap=True)
err = Console(stderr=True)

Url = Annotated[
    str, typer.Option(envvar="IOTCTL_HUB_URL", help="The hub's API (e.g. http://127.0.0.1:8080).")
]
Key = Annotated[
    str | None,
    typer.Option(envvar="IOTCTL_API_KEY", help="An API key of the hub.", show_default=False),
]
DEFAULT_URL = "http://127.0.0.1:8080"


def _fail(exc: HubError) -> NoReturn:
    err.print(f"[red]hub: {exc}[/red]")
    unreachable_or_refused = exc.status in (0, 401, 403)
    raise typer.Exit(2 if unreachable_or_refused else 1)


def _age(ts: str | None) -> str:
    if not ts:
        return "-"
    seconds = (
        datetime.now(UTC) - datetime.fromisoformat(ts.replace("Z", "+00:00"))
    ).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


@app.command()
def devices(
    url: Url = DEFAULT_URL,
    key: Key = None,
    site: Annotated[str | None, typer.Option(help="Only this site's devices.")] = None,
) -> None:
    """The devices the hub knows, with their status and when they were last read."""
    with HubClient(url, key) as hub:
        try:
            rows = hub.devices()
        except HubError as exc:
            _fail(exc)
    table = Table("device", "agent", "profile", "status", "site", "pole", "last read")
    for d in rows:
        if site is None or d.get("site") == site:
            table.add_row(
                d["device_id"], d["agent_id"], d["profile"], d["status"],
                d.get("site") or "-", d.get("pole") or "-", _age(d.get("last_seen")),
            )  # fmt: skip
    out.print(table)


@app.command()
def show(device_id: str, url: Url = DEFAULT_URL, key: Key = None) -> None:
    """One device: where it is and its latest values."""
    with HubClient(url, key) as hub:
        try:
            device = hub.device(device_id)
            latest = hub.latest(device_id)
        except HubError as exc:
            _fail(exc)
    facts = ("agent_id", "profile", "status", "site", "pole", "mount_position", "lat", "lon")
    for name in facts:
        if device.get(name) is not None:
            out.print(f"{name:15} {device[name]}")
    points: dict[str, Any] = latest["points"]
    values = {name: point["value"] for name, point in points.items()}
    units = {name: point["unit"] for name, point in points.items()}
    table = Table("point", "value", "read")
    for shown in show_values(local_profile(device.get("profile")), values, units):
        table.add_row(shown.name, escape(shown.text), _age(points[shown.name]["ts"]))
    out.print(table)


@app.command()
def command(
    device_id: str,
    name: str,
    params: Annotated[list[str] | None, typer.Argument(help="Parameters as name=value.")] = None,
    url: Url = DEFAULT_URL,
    key: Key = None,
    wait: Annotated[bool, typer.Option(help="Wait for the final status.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 30.0,
) -> None:
    """Send a command and follow it to its final status."""
    try:
        test = parse_test_command(" ".join([name, *(params or [])]))
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    with HubClient(url, key) as hub:
        try:
            row = hub.send_command(device_id, test.name, test.params)
            out.print(f"{row['command_id']}  {row['status']}")
            if wait:
                row = hub.wait_command(
                    row["command_id"],
                    timeout,
                    lambda r: out.print(f"{r['command_id']}  {r['status']}  {r['detail']}"),
                )
        except HubError as exc:
            _fail(exc)
    if wait and row["status"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def alarms(
    url: Url = DEFAULT_URL,
    key: Key = None,
    state: Annotated[
        str | None, typer.Option(help="active, acknowledged, cleared; comma-separated.")
    ] = "active,acknowledged",
    device: Annotated[str | None, typer.Option(help="Only this device's alarms.")] = None,
) -> None:
    """Alarms, newest first (open ones by default)."""
    with HubClient(url, key) as hub:
        try:
            rows = hub.alarms(state, device)
        except HubError as exc:
            _fail(exc)
    table = Table("alarm", "severity", "state", "rule", "device", "raised", "message")
    for a in rows:
        table.add_row(
            a["alarm_id"], a["severity"], a["state"], a["rule"],
            a["device_id"] or f"(agent {a['agent_id']})", _age(a["raised_at"]), a["message"],
        )  # fmt: skip
    out.print(table)


@app.command()
def ack(
    alarm_id: str,
    url: Url = DEFAULT_URL,
    key: Key = None,
    note: Annotated[str, typer.Option(help="What is being done about it.")] = "",
) -> None:
    """Acknowledge an alarm."""
    with HubClient(url, key) as hub:
        try:
            row = hub.acknowledge(alarm_id, note)
        except HubError as exc:
            _fail(exc)
    out.print(f"{row['alarm_id']}  {row['state']}  by {row['acknowledged_by']}")


_MARKS = {"PASS": "[green]PASS[/green]", "FAIL": "[red]FAIL[/red]", "WARN": "[yellow]WARN[/yellow]"}


@app.command(name="commission")
def commission_device(
    device_id: str,
    url: Url = DEFAULT_URL,
    key: Key = None,
    test: Annotated[
        list[str] | None,
        typer.Option(help='A test command, e.g. "set_dimming level=40" (repeatable, in order).'),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each check may wait.")] = 30.0,
    max_age: Annotated[
        float, typer.Option(help="A reading at most this many seconds old counts as reporting.")
    ] = 300.0,
    report: Annotated[
        Path | None, typer.Option(help="Write the commissioning report (JSON) to this file.")
    ] = None,
) -> None:
    """On-site commissioning check of one device: registered, online, reporting, test
    commands carried out and seen in its telemetry, no active alarm."""
    try:
        tests = [parse_test_command(t) for t in test or []]
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc

    def progress(check: Check) -> None:
        out.print(f"{_MARKS.get(check.outcome, check.outcome):>4}  {check.name}: {check.detail}")

    with HubClient(url, key) as hub:
        try:
            result = commission(hub, device_id, tests, timeout, progress, max_age)
        except HubError as exc:
            _fail(exc)
    document: dict[str, Any] = result.as_dict()
    if report is not None:
        report.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    verdict = "[green]passed[/green]" if result.passed else "[red]failed[/red]"
    out.print(f"{device_id}: commissioning {verdict}")
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def lighting(
    url: Url = DEFAULT_URL,
    key: Key = None,
    preview: Annotated[
        str | None, typer.Option(help="Show this strategy's upcoming steps instead.")
    ] = None,
    hours: Annotated[int, typer.Option(help="How far ahead the preview goes.")] = 48,
) -> None:
    """Lighting strategies and their next step, or one strategy's upcoming steps."""
    with HubClient(url, key) as hub:
        try:
            if preview is not None:
                plan = hub.preview(preview, hours)
            else:
                rows = hub.strategies()
        except HubError as exc:
            _fail(exc)
    if preview is not None:
        table = Table("local time", "UTC", "step", "command", "then")
        for f in plan["firings"]:
            params = " ".join(f"{k}={v}" for k, v in f["params"].items())
            table.add_row(
                f["at_local"],
                f["at_utc"],
                f["at"],
                f"{f['command']} {params}".strip(),
                _state(f.get("state", {})),
            )
        out.print(table)
        for s in plan["skipped"]:
            out.print(f"skipped: step {s['step']} on {s['date']}: {s['reason']}")
        return
    table = Table("strategy", "name", "enabled", "selector", "next step")
    for r in rows:
        upcoming = r.get("next_firing")
        nxt = f"{upcoming['at_local']} {upcoming['command']}" if upcoming else "-"
        table.add_row(
            r["strategy_id"], r["name"], str(r["enabled"]), json.dumps(r["selector"]), nxt
        )
    out.print(table)


def _state(state: dict[str, dict[str, Any]]) -> str:
    """``lamp_on=True dimming=100`` (each profile's, named when there are several)."""
    shown = {
        profile: " ".join(
            f"{point}={value}" for point, value in sorted(points.items(), key=_lamp_first)
        )
        for profile, points in state.items()
        if points
    }
    if len(shown) == 1:
        return next(iter(shown.values()))
    return "; ".join(f"{profile}: {text}" for profile, text in shown.items())


def _lamp_first(item: tuple[str, Any]) -> tuple[bool, str]:
    return (not isinstance(item[1], bool), item[0])
