"""``edge-agent``: run an agent or check its configuration."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge_agent.agent import Agent
from edge_agent.polling.probe import DeviceProbe, probe_devices
from edge_agent.provision import provision
from edge_agent.settings import AgentSettings
from iot_runtime import ConfigError, configure_logging, load_settings

app = typer.Typer(
    help="The edge agent: polls field devices and forwards to the hub.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True)
log = structlog.get_logger(__name__)

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
    """Run the agent until SIGINT (Ctrl-C) or SIGTERM, then stop within 5 s.

    The stop commits the readings not yet sent to the spool (sent after the next start),
    closes every driver and the uplink, and logs what it did.
    """
    settings = _settings(config)
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(_serve(Agent(settings)))


async def _serve(agent: Agent) -> None:
    """Run ``agent``; SIGINT and SIGTERM stop it (a second signal only says it is stopping)."""
    loop = asyncio.get_running_loop()

    def on_signal(name: str) -> None:
        if agent.stopping:
            log.warning("already stopping", signal=name, within_s=agent.stop_timeout_s)
            return
        log.info("stop requested", signal=name)
        agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        await agent.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if agent.stragglers:
        # asyncio.run would wait for ever on tasks that ignore cancellation; the spool and the
        # drivers are closed and the stragglers were logged: leave within the bound
        logging.shutdown()
        os._exit(1)


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


def _failed(exc: Exception) -> str:
    """One line for the table: the error's class and message (a driver's, or unexpected)."""
    return f"[red]{escape(type(exc).__name__)}[/]: {escape(str(exc))}"


app.command("provision")(provision)
