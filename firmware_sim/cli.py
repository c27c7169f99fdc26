"""``firmware-sim``: run device simulators, one or a whole site, and inject faults at run time.

::

    firmware-sim run smart-pole --host 127.0.0.1 --port 5020 --seed 1 --unit-id 1
    firmware-sim run gateway-bus --link-dir /tmp/gw
    firmware-sim run-site examples/site.yaml --agent-config /tmp/agent.yaml
    firmware-sim fault pole-1 no_reply            # until cleared
    firmware-sim fault pole-1 no_reply --count 3  # the next 3 requests only
    firmware-sim clear pole-1
    firmware-sim status
    firmware-sim profiles

``run`` and ``run-site`` print every endpoint on stdout once it serves (``run``:
``smart_pole  modbus-tcp://127.0.0.1:5020 unit 1``; ``run-site``: a table, then a
``control: <where>`` line), then serve until Ctrl-C or SIGTERM and stop everything. Logs go to
stderr. ``fault``/``clear``/``status`` talk to the control endpoint of a running ``run-site``
(``--control``: a UNIX socket path or a TCP port on 127.0.0.1; see :mod:`firmware_sim.control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from device_profiles import ProfileError, builtin_profile_names, load_builtin_profile
from firmware_sim.control import DEFAULT_CONTROL, ControlError, ControlServer, request
from firmware_sim.scenario import Scenario, agent_config, parse_scenario, run_scenario
from iot_runtime.logging import configure_logging

__all__ = ["app"]

app = typer.Typer(
    help="Device simulators speaking the real protocols.",
    no_args_is_help=True,
    add_completion=False,
)
# piped (scripts, tests): wide enough that an address never wraps inside the table
_console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
_errors = Console(stderr=True, highlight=False)

#: ``run`` device names -> scenario kind (and the default port, where there is one).
KINDS = {
    "smart-pole": ("smart_pole_tcp", 5020),
    "smart-pole-tcp": ("smart_pole_tcp", 5020),
    "smart-pole-rtu": ("smart_pole_rtu", None),
    "gateway-bus": ("gateway_bus", None),
    "manhole-cover": ("manhole_cover", 5683),
    "nbiot-modem": ("nbiot_modem", None),
    "pollution-analyser": ("pollution_analyser", 0),
}
#: Profiles that have a physics model, by profile name -> ``run`` device name.
SIMULATORS = {
    "smart_pole": "smart-pole",
    "water_meter": "gateway-bus",
    "electricity_meter": "gateway-bus",
    "barrier_gate": "gateway-bus",
    "parking_sensor": "gateway-bus",
    "access_controller": "gateway-bus",
    "manhole_cover": "manhole-cover",
    "pollution_monitor": "pollution-analyser",
}

ControlOpt = Annotated[
    str,
    typer.Option(
        "--control",
        envvar="FIRMWARE_SIM_CONTROL",
        help="Control endpoint: a UNIX socket path, or a TCP port on 127.0.0.1.",
    ),
]
LogLevelOpt = Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")]


@app.command()
def run(
    device: Annotated[str, typer.Argument(help=f"One of: {', '.join(KINDS)}.")],
    host: Annotated[str, typer.Option(help="Address to listen on (TCP/UDP sims).")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(
            help="TCP/UDP port; 0 picks a free one. Default: 5020 (smart-pole), 5683 "
            "(manhole-cover); pollution-analyser listens on TCP only when given (else a pty)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulation noise.")] = None,
    unit_id: Annotated[int | None, typer.Option(help="Modbus unit id (smart pole).")] = None,
    tick: Annotated[float, typer.Option(help="Seconds between physics updates.")] = 1.0,
    utc_offset: Annotated[
        float, typer.Option(help="Hours from UTC of the simulated site (smart pole day/night).")
    ] = 0.0,
    link_dir: Annotated[
        str | None, typer.Option(help="Directory of the pty symlink (RTU, modem).")
    ] = None,
    control: Annotated[
        str | None,
        typer.Option(help="Also serve a control endpoint (UNIX socket path or TCP port)."),
    ] = None,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """Serve one simulated device until interrupted."""
    if device not in KINDS:
        raise typer.BadParameter(
            f"no simulator for '{device}' (have: {', '.join(KINDS)})", param_hint="DEVICE"
        )
    kind, default_port = KINDS[device]
    spec: dict[str, Any] = {"name": kind.removesuffix("_tcp"), "kind": kind, "seed": seed}
    if kind in ("smart_pole_tcp", "smart_pole_rtu", "gateway_bus", "manhole_cover"):
        spec["tick_s"] = tick
    if kind in ("smart_pole_tcp", "smart_pole_rtu"):
        spec["utc_offset_h"] = utc_offset
        if unit_id is not None:
            spec["unit_id"] = unit_id
    if kind in ("smart_pole_tcp", "manhole_cover", "pollution_analyser"):
        spec["host"] = host
        spec["port"] = default_port if port is None else port
        if kind == "pollution_analyser":
            spec["transport"] = "tcp_server" if port is not None else "pty"
    if kind in ("smart_pole_rtu", "gateway_bus", "nbiot_modem"):
        spec["link_dir"] = link_dir
    scenario = _checked(lambda: parse_scenario({"sims": [spec]}, "options"), options=True)
    _logging(log_level)
    _main(_serve(scenario, control=control, agent_out=None, mqtt=("127.0.0.1", 1883), table=False))


@app.command("run-site")
def run_site(
    scenario_path: Annotated[Path, typer.Argument(metavar="SCENARIO", help="Scenario YAML.")],
    agent_config_out: Annotated[
        Path | None,
        typer.Option("--agent-config", help="Write the edge-agent YAML for the running site here."),
    ] = None,
    control: ControlOpt = DEFAULT_CONTROL,
    mqtt_host: Annotated[str, typer.Option(help="Broker host in the agent config.")] = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(help="Broker port in the agent config.")] = 1883,
    log_level: LogLevelOpt = "INFO",
) -> None:
    """Run every simulator of a scenario; print their endpoints; serve until interrupted."""
    from firmware_sim.scenario import load_scenario  # noqa: PLC0415 - one use

    scenario = _checked(lambda: load_scenario(scenario_path))
    out = agent_config_out
    if out is None and scenario.agent_config is not None:  # relative to the scenario file
        out = scenario_path.parent / scenario.agent_config
    _logging(log_level)
    _main(_serve(scenario, control=control, agent_out=out, mqtt=(mqtt_host, mqtt_port), table=True))


@app.command()
def fault(
    sim: Annotated[str, typer.Argument(help="Name of the sim in the scenario.")],
    fault_name: Annotated[str, typer.Argument(metavar="FAULT", help="e.g. no_reply, drop.")],
    count: Annotated[
        int | None,
        typer.Option(
            min=1, help="Hit only the next N requests/frames/commands (default: until cleared)."
        ),
    ] = None,
    unit_id: Annotated[int | None, typer.Option(help="Only this Modbus unit.")] = None,
    delay_s: Annotated[float | None, typer.Option(help="Delay of a delay fault.")] = None,
    code: Annotated[
        int | None, typer.Option(help="Modbus exception code / modem CME error code.")
    ] = None,
    command: Annotated[
        str | None, typer.Option(help="Modem: AT command prefix the fault applies to.")
    ] = None,
    control: ControlOpt = DEFAULT_CONTROL,
) -> None:
    """Inject a fault into a simulator of a running run-site.

    Every fault lasts until `firmware-sim clear SIM`, unless --count N is given: then it hits
    the next N requests (frames, commands) only. The same rule for every simulator.

    Faults by kind: smart_pole_tcp, smart_pole_rtu, gateway_bus: no_reply, delay, exception,
    corrupt_frame, truncated, garbage, disconnect, restart (--count, --unit-id, --delay-s,
    --code). manhole_cover: drop, unavailable, malformed, delay (--count, --delay-s).
    nbiot_modem: no_answer, late_answer, error, garbage (--command, --count, --code), unplug,
    reboot (at once). pollution_analyser: bad_crc, bad_length, garbage, split, no_answer
    (--count).
    """
    message: dict[str, Any] = {"op": "fault", "sim": sim, "fault": fault_name}
    options = {"count": count, "unit_id": unit_id, "delay_s": delay_s, "code": code}
    message.update({k: v for k, v in {**options, "command": command}.items() if v is not None})
    _console.print(_ask(message, control))


@app.command()
def clear(
    sim: Annotated[str, typer.Argument(help="Name of the sim in the scenario.")],
    control: ControlOpt = DEFAULT_CONTROL,
) -> None:
    """Remove every fault of a simulator of a running run-site (and replug a modem)."""
    _console.print(_ask({"op": "clear", "sim": sim}, control))


@app.command("set")
def set_points(
    sim: Annotated[str, typer.Argument(help="Name of the sim in the scenario.")],
    assignments: Annotated[
        list[str],
        typer.Argument(metavar="POINT=VALUE...", help="e.g. door_open=true pm25=180 tilt=12.5"),
    ],
    device: Annotated[
        str | None, typer.Option(help="The device of a sim with several (a gateway bus).")
    ] = None,
    control: ControlOpt = DEFAULT_CONTROL,
) -> None:
    """Make a simulated device report these values (a door opened, a one-key alarm, a tilt,
    a PM2.5 peak) until `firmware-sim release`: to trigger alarms without code.

    Values are read by the point's type in the device's profile: true/false (also on/off,
    open/closed) for switches, numbers within the point's range, or an enum's label.
    """
    message = {"op": "set", "sim": sim, "device": device, "points": assignments}
    _console.print(_ask(message, control))


@app.command()
def release(
    sim: Annotated[str, typer.Argument(help="Name of the sim in the scenario.")],
    points: Annotated[
        list[str] | None, typer.Argument(metavar="[POINT...]", help="Default: every set point.")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="The device of a sim with several (a gateway bus).")
    ] = None,
    control: ControlOpt = DEFAULT_CONTROL,
) -> None:
    """Let the simulator's physics drive points set by `firmware-sim set` again."""
    message = {"op": "release", "sim": sim, "device": device, "points": points or []}
    _console.print(_ask(message, control))


@app.command()
def status(control: ControlOpt = DEFAULT_CONTROL) -> None:
    """Show each simulator's endpoint, faults and recent traffic counts."""
    table = Table("name", "kind", "address", "faults", "traffic")
    for entry in _ask({"op": "status"}, control):
        traffic = " ".join(f"{k}={v}" for k, v in entry["traffic"].items())
        table.add_row(
            entry["name"],
            entry["kind"],
            entry["address"],
            ", ".join(entry["faults"]) or "-",
            traffic,
        )
    _console.print(table)


@app.command()
def profiles() -> None:
    """List the built-in device profiles and which simulator serves them."""
    table = Table("profile", "simulator", "points", "description")
    for name in builtin_profile_names():
        profile = load_builtin_profile(name)
        table.add_row(
            name, SIMULATORS.get(name, "-"), str(len(profile.points)), profile.description
        )
    _console.print(table)


# -- helpers --------------------------------------------------------------------------------


def _checked(load: Callable[[], Scenario], *, options: bool = False) -> Scenario:
    try:
        scenario = load()
    except ProfileError as exc:
        if options:  # built from `run` options: name the option, not the document path
            issues = "; ".join(issue.removeprefix("sims[0].") for issue in exc.issues)
            raise typer.BadParameter(issues) from exc
        _errors.print(f"[red]invalid scenario[/red] {exc.source}:")
        for issue in exc.issues:
            _errors.print(f"  {exc.source}: {issue}", markup=False)
        raise typer.Exit(2) from exc
    return scenario


def _logging(level: str) -> None:
    try:
        configure_logging(level)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from exc


def _main(coro: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(coro)
    except KeyboardInterrupt:  # a second Ctrl-C while shutting down
        raise typer.Exit(130) from None
    except (OSError, ControlError) as exc:
        _errors.print(f"[red]cannot serve:[/red] {exc}")
        raise typer.Exit(1) from exc


def _ask(message: dict[str, Any], control: str) -> Any:
    try:
        return asyncio.run(request(message, control))
    except ControlError as exc:
        _errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


async def _serve(
    scenario: Scenario,
    *,
    control: str | None,
    agent_out: Path | None,
    mqtt: tuple[str, int],
    table: bool,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        site = await stack.enter_async_context(run_scenario(scenario))
        server = None
        if control is not None:
            server = await stack.enter_async_context(ControlServer(site.sims, control))
        if agent_out is not None:
            document = agent_config(site, mqtt_host=mqtt[0], mqtt_port=mqtt[1])
            _write_atomic(agent_out, yaml.safe_dump(document, sort_keys=False))
        if table:
            rows = Table("name", "kind", "address")
            for sim in site.sims.values():
                rows.add_row(sim.name, sim.kind, sim.address)
            _console.print(rows)
            if agent_out is not None:
                _console.print(f"agent config: {agent_out}")
            if server is not None:
                _console.print(f"control: {server.address}")
        else:
            for sim in site.sims.values():
                _console.print(f"{sim.name}  {sim.address}")
        sys.stdout.flush()
        await stop.wait()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
