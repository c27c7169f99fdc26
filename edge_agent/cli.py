"""``edge-agent``: run an agent or check its configuration."""

from __future__ import annotations

import asyncio
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

from device_profiles import ProfileError
from drivers import DriverError
from edge_agent.agent import Agent
from edge_agent.devices import DeviceRuntime
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
def check(config: ConfigOption) -> None:
    """Validate the configuration and read every device once, printing a table."""
    settings = _settings(config)
    configure_logging("WARNING", settings.log_format)
    failures = asyncio.run(_probe(settings))
    raise typer.Exit(1 if failures else 0)


async def _probe(settings: AgentSettings) -> int:
    table = Table(title=f"agent {settings.agent_id}")
    for column in ("device", "profile", "connection", "result"):
        table.add_column(column)
    failures = 0
    for config in settings.devices:
        connection = config.connection.model_dump_json(exclude={"transport"})
        try:
            device = DeviceRuntime.from_config(config)
        except (ProfileError, DriverError) as exc:
            failures += 1
            table.add_row(config.device_id, config.profile, connection, _failed(exc))
            continue
        try:
            async with device.driver:
                values = await device.read_values(list(device.profile.points))
            shown = ", ".join(f"{k}={v}" for k, v in list(values.items())[:6])
            result = f"[green]ok[/] {len(values)} points: {shown}"
        except Exception as exc:  # noqa: BLE001 - one device's failure of any kind is a table row
            failures += 1
            result = _failed(exc)
        table.add_row(config.device_id, device.profile.name, connection, result)
    out.print(table)
    return failures


def _failed(exc: Exception) -> str:
    """One line for the table: the error's class and message (a driver's, or unexpected)."""
    return f"[red]{escape(type(exc).__name__)}[/]: {escape(str(exc))}"


app.command("provision")(provision)
