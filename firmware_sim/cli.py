"""``firmware-sim``: run device simulators from the command line.

::

    firmware-sim run smart-pole --host 127.0.0.1 --port 5020 --seed 1 --unit-id 1
    firmware-sim profiles

``run`` prints the endpoint (``smart_pole  modbus-tcp://127.0.0.1:5020 unit 1``; with
``--port 0`` the port picked) on stdout once the server listens, then serves until Ctrl-C or
SIGTERM. Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from device_profiles import builtin_profile_names, load_builtin_profile
from firmware_sim.runner import run_smart_pole
from iot_runtime.logging import configure_logging

__all__ = ["app"]

app = typer.Typer(
    help="Device simulators speaking the real protocols.",
    no_args_is_help=True,
    add_completion=False,
)
_console = Console(highlight=False, soft_wrap=True)
_errors = Console(stderr=True, highlight=False)

#: Profiles that have a physics model, by profile name.
SIMULATORS = ("smart_pole",)


@app.command()
def run(
    device: Annotated[str, typer.Argument(help="Device to simulate, e.g. smart-pole.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = 5020,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulation noise.")] = None,
    unit_id: Annotated[int, typer.Option(help="Modbus unit id to answer as.")] = 1,
    tick: Annotated[float, typer.Option(help="Seconds between physics updates.")] = 1.0,
    utc_offset: Annotated[
        float, typer.Option(help="Hours from UTC of the simulated site (day/night).")
    ] = 0.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Serve a simulated device over Modbus TCP until interrupted."""
    name = device.replace("-", "_")
    if name not in SIMULATORS:
        raise typer.BadParameter(
            f"no simulator for '{device}' (have: {', '.join(SIMULATORS)})", param_hint="DEVICE"
        )
    if not 0 <= unit_id <= 247:
        raise typer.BadParameter("must be 0-247", param_hint="--unit-id")
    if tick <= 0:
        raise typer.BadParameter("must be > 0", param_hint="--tick")
    try:
        configure_logging(log_level)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from exc
    try:
        asyncio.run(_serve(host, port, seed, unit_id, tick, utc_offset))
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        raise typer.Exit(130) from None
    except OSError as exc:
        _errors.print(f"[red]cannot serve:[/red] {exc}")
        raise typer.Exit(1) from exc


async def _serve(
    host: str, port: int, seed: int | None, unit_id: int, tick_s: float, utc_offset_h: float
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with run_smart_pole(
        seed=seed,
        host=host,
        port=port,
        unit_id=unit_id,
        tick_s=tick_s,
        utc_offset_h=utc_offset_h,
    ) as sim:
        _console.print(f"smart_pole  {sim.endpoint} unit {sim.unit_id}")
        sys.stdout.flush()
        await stop.wait()


@app.command()
def profiles() -> None:
    """List the built-in device profiles and which of them can be simulated."""
    table = Table("profile", "simulator", "points", "description")
    for name in builtin_profile_names():
        profile = load_builtin_profile(name)
        table.add_row(
            name,
            name.replace("_", "-") if name in SIMULATORS else "-",
            str(len(profile.points)),
            profile.description,
        )
    _console.print(table)
