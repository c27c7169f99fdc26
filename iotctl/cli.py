"""``iotctl``: the operator's and developer's tool (demo, profiles, HJ 212 frames, the hub)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from device_profiles import ProfileError, builtin_profile_names, load_profile, profile_json_schema
from iot_runtime import configure_logging
from iotctl.demo import DemoOptions, run_demo_until_done
from iotctl.hj212_cli import app as hj212_app
from iotctl.hub_cli import app as hub_app
from iotctl.language import set_language
from iotctl.modem_cli import app as modem_app
from iotctl.port_check import PortTaken

app = typer.Typer(help="City IoT: demo, device profiles and tools.", no_args_is_help=True)
profiles_app = typer.Typer(
    help="Device profiles: list, validate, JSON Schema.", no_args_is_help=True
)
app.add_typer(profiles_app, name="profiles")
app.add_typer(hj212_app, name="hj212", help="HJ 212-2017 frames: decode and encode.")
app.add_typer(hub_app, name="hub", help="The hub's API: devices, commands, alarms, commissioning.")
app.add_typer(modem_app, name="modem", help="NB-IoT modems: check a sensor's modem on site.")
out = Console(soft_wrap=True)
err = Console(stderr=True)


@app.callback()
def main(
    lang: Annotated[
        str | None,
        typer.Option(
            "--lang",
            envvar="IOTCTL_LANG",
            help="Language of what is printed: en or zh (default: from the locale).",
        ),
    ] = None,
) -> None:
    """City IoT: demo, device profiles and field tools."""
    try:
        set_language(lang)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--lang") from None


@app.command()
def demo(
    api_port: Annotated[int, typer.Option(help="Port of the hub's HTTP API.")] = 8080,
    mqtt: Annotated[
        str | None,
        typer.Option(
            envvar="DEMO_MQTT_URL",
            help="Use this broker (mqtt://host:port) instead of the embedded one.",
        ),
    ] = None,
    influxdb: Annotated[
        str | None,
        typer.Option(
            envvar="DEMO_INFLUXDB_URL",
            help="Store telemetry in this InfluxDB 1.x (http://host:8086).",
        ),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its files.")] = Path(
        "var/demo"
    ),
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    log_level: Annotated[str, typer.Option(help="Log level of the components.")] = "WARNING",
) -> None:
    """Run a simulated smart pole, an edge agent and the hub, printing live readings."""
    configure_logging(log_level, "console")
    options = DemoOptions(
        api_port=api_port,
        mqtt_url=mqtt,
        influxdb_url=influxdb,
        data_dir=data_dir,
        duration_s=duration,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run_demo_until_done(options, out)
    except PortTaken as exc:
        err.print(
            f"[red]error:[/] the API's port {exc.port} is taken ({exc.reason}); "
            f"choose another with --api-port, e.g. --api-port {_another_port(exc.port)}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def _another_port(port: int) -> int:
    return port + 1 if port < 65535 else 8081


@profiles_app.command("list")
def profiles_list() -> None:
    """The profiles shipped with this package."""
    for name in builtin_profile_names():
        out.print(name)


@profiles_app.command("validate")
def profiles_validate(
    files: Annotated[list[Path], typer.Argument(help="Profile YAML files.")],
) -> None:
    """Validate profile files; print each problem with its field path."""
    failed = 0
    for path in files:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            failed += 1
            for issue in exc.issues:
                err.print(f"[red]{path}[/]: {issue}")
            continue
        out.print(
            f"[green]ok[/] {path}: {profile.name}, {len(profile.points)} points, {len(profile.commands)} commands"
        )
    raise typer.Exit(1 if failed else 0)


@profiles_app.command("schema")
def profiles_schema() -> None:
    """Print the JSON Schema of profile documents (for editors)."""
    typer.echo(profile_json_schema(), nl=False)
