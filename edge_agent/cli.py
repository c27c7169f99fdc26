"""``edge-agent``: run an agent or check its configuration."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge_agent.agent import Agent
from edge_agent.probe import DeviceProbe, probe_devices
from edge_agent.provision import provision
from edge_agent.settings import AgentSettings
from iot_runtime import ConfigError, configure_logging, load_settings

app = typer.Typer(
    help="The edge agent: polls field devices and forwards to the hub.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="Agent YAML file (AGENT_* environment variables override it)."
    ),
]


def _settings(config: Path) -> AgentSettings:
    try:
        return load_settings(AgentSettings, config)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def run(config: ConfigOption) -> None:
    """Run the agent until interrupted."""
    settings = _settings(config)
    configure_logging(settings.log_level, settings.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Agent(settings).run())


@app.command()
def check(
    config: ConfigOption,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON document (values as read, beside their text)."),
    ] = False,
) -> None:
    """Validate the configuration and read every point of every device once; exit 1 if a
    device could not be read."""
    settings = _settings(config)
    configure_logging("WARNING", settings.log_format)
    probes = asyncio.run(probe_devices(settings))
    if as_json:
        document = {"agent_id": settings.agent_id, "devices": [p.as_json() for p in probes]}
        typer.echo(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        _print_probes(settings.agent_id, probes)
    raise typer.Exit(0 if all(p.ok for p in probes) else 1)


def _print_probes(agent_id: str, probes: list[DeviceProbe]) -> None:
    summary = Table(title=f"agent {agent_id}")
    for column in ("device", "profile", "connection", "result"):
        summary.add_column(column)
    for probe in probes:
        if probe.error is None:
            result = f"[green]ok[/] {len(probe.values)} points"
        else:
            result = f"[red]{type(probe.error).__name__}[/]: {escape(str(probe.error))}"
        connection = json.dumps(probe.connection, ensure_ascii=False)
        summary.add_row(probe.config.device_id, probe.profile.name, escape(connection), result)
    out.print(summary)
    for probe in probes:
        if probe.ok:
            points = Table(
                "point", "value", title=f"{probe.config.device_id} ({probe.profile.name})"
            )
            for shown in probe.shown():
                points.add_row(shown.name, escape(shown.text))
            out.print(points)


app.command("provision")(provision)
