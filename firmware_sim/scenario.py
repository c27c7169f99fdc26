"""A site of simulators described in one YAML file, run in one ``async with``.

::

    seed: 7
    agent_id: demo-site
    sims:
      - {name: pole-1, kind: smart_pole_tcp, port: 0, unit_id: 1}
      - {name: pole-2, kind: smart_pole_rtu, unit_id: 1}
      - {name: gw, kind: gateway_bus}
      - {name: manhole-1, kind: manhole_cover}
      - {name: nb-1, kind: nbiot_modem}

:func:`load_scenario` reads the file strictly (duplicate keys, unknown keys, bad values and
duplicate sim names are refused as ``site.yaml: sims[2].port: ...``, a
:class:`~device_profiles.ProfileError`). :func:`run_scenario` starts every simulator and yields
a :class:`Site`: one :class:`RunningSim` per entry, each with its address, its faults
(:meth:`RunningSim.inject` maps a fault name onto that simulator's own fault API) and a status.
:func:`agent_config` renders the edge-agent configuration (``AgentSettings`` document) that
points at the running simulators.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from device_profiles import ProfileError
from device_profiles.errors import validation_issues
from device_profiles.wire.topics import ID_PATTERN
from device_profiles.yaml_io import load_yaml_mapping
from firmware_sim.control import (
    RunningSim,
    start_gateway_bus,
    start_manhole_cover,
    start_nbiot_modem,
    start_pollution_analyser,
    start_smart_pole_rtu,
    start_smart_pole_tcp,
)
from firmware_sim.gateway import DEFAULT_UNITS

__all__ = [
    "KINDS",
    "GatewayBusSpec",
    "ManholeCoverSpec",
    "NbIotModemSpec",
    "PollutionAnalyserSpec",
    "Scenario",
    "SimSpec",
    "Site",
    "SmartPoleRtuSpec",
    "SmartPoleTcpSpec",
    "agent_config",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]

SimName = Annotated[str, Field(pattern=ID_PATTERN, description="Unique name; the device id.")]
Port = Annotated[int, Field(ge=0, le=65535, description="0 picks a free port.")]
TickS = Annotated[float | None, Field(gt=0, description="Seconds between physics steps.")]
LinkName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: SimName
    seed: int | None = Field(default=None, description="Overrides the scenario's seed.")


class SmartPoleTcpSpec(_Spec):
    """A smart pole controller on Modbus TCP."""

    kind: Literal["smart_pole_tcp"]
    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 0
    unit_id: int = Field(default=1, ge=0, le=247)
    tick_s: TickS = 1.0
    utc_offset_h: float = Field(default=0.0, ge=-12, le=14)


class SmartPoleRtuSpec(_Spec):
    """A smart pole controller on a simulated RS-485 line (a pseudo-terminal)."""

    kind: Literal["smart_pole_rtu"]
    unit_id: int = Field(default=1, ge=1, le=247)
    tick_s: TickS = 1.0
    utc_offset_h: float = Field(default=0.0, ge=-12, le=14)
    link_dir: str | None = Field(default=None, description="Where the port symlink goes.")
    link_name: LinkName = "ttyPOLE0"


class GatewayBusSpec(_Spec):
    """A community gateway's RS-485 bus: meters, gate, parking, access control."""

    kind: Literal["gateway_bus"]
    units: dict[str, Annotated[int, Field(ge=1, le=247)]] | None = Field(
        default=None, description="Profile name -> unit id (default: all five, units 1-5)."
    )
    tick_s: TickS = 1.0
    link_dir: str | None = None
    link_name: LinkName = "ttyGW0"

    @field_validator("units")
    @classmethod
    def _units_known(cls, units: dict[str, int] | None) -> dict[str, int] | None:
        if units is not None:
            if not units:
                raise ValueError("put at least one device on the bus")
            unknown = sorted(set(units) - set(DEFAULT_UNITS))
            if unknown:
                raise ValueError(
                    f"no gateway device model for {unknown} (have: {', '.join(DEFAULT_UNITS)})"
                )
            if len(set(units.values())) != len(units):
                raise ValueError("two devices share a unit id")
        return units


class ManholeCoverSpec(_Spec):
    """A manhole cover sensor on CoAP."""

    kind: Literal["manhole_cover"]
    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 0
    tick_s: TickS = 1.0
    max_age_s: int = Field(default=60, ge=0)


class NbIotModemSpec(_Spec):
    """An NB-IoT modem answering AT commands on a pseudo-terminal (``ttyNB0``)."""

    kind: Literal["nbiot_modem"]
    link_dir: str | None = None
    register_after_polls: int = Field(default=0, ge=0)
    echo: bool = True
    csq: int = Field(default=24, ge=0, le=99)
    roaming: bool = False
    bind_host: str = Field(default="127.0.0.1", min_length=1)


class PollutionAnalyserSpec(_Spec):
    """An HJ 212-2017 air-quality analyser on a pseudo-terminal or listening on TCP."""

    kind: Literal["pollution_analyser"]
    transport: Literal["pty", "tcp_server"] = "pty"
    host: str = Field(default="127.0.0.1", min_length=1)
    port: Port = 0
    mn: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9]{1,24}$", description="Device MN (access code)."
    )
    rtd_interval_s: float | None = Field(default=30.0, gt=0)


SimSpec = Annotated[
    SmartPoleTcpSpec
    | SmartPoleRtuSpec
    | GatewayBusSpec
    | ManholeCoverSpec
    | NbIotModemSpec
    | PollutionAnalyserSpec,
    Field(discriminator="kind"),
]

#: Every ``kind`` a scenario may name.
KINDS = (
    "smart_pole_tcp",
    "smart_pole_rtu",
    "gateway_bus",
    "manhole_cover",
    "nbiot_modem",
    "pollution_analyser",
)


class Scenario(BaseModel):
    """A site: the simulators to run together, and where to write the agent's config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int | None = Field(default=None, description="Seed of every simulator's noise.")
    agent_id: Annotated[str, Field(pattern=ID_PATTERN)] = "sim-site"
    agent_config: Path | None = Field(
        default=None,
        description="Write the edge-agent YAML for this site here (relative to the scenario "
        "file); the CLI's --agent-config overrides it.",
    )
    sims: list[SimSpec] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _kinds_known(cls, data: Any) -> Any:
        """Name an unknown or missing ``kind`` by its path (pydantic only says "tag")."""
        sims = data.get("sims") if isinstance(data, dict) else None
        for index, sim in enumerate(sims if isinstance(sims, list) else []):
            if isinstance(sim, dict) and sim.get("kind") not in KINDS:
                got = f"unknown kind {sim['kind']!r}" if "kind" in sim else "missing kind"
                raise ValueError(f"sims[{index}].kind: {got} (have: {', '.join(KINDS)})")
        return data

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names: dict[str, int] = {}
        links: dict[str, int] = {}
        for index, sim in enumerate(self.sims):
            if sim.name in names:
                raise ValueError(
                    f"sims[{index}].name: {sim.name!r} is already the name of sims[{names[sim.name]}]"
                )
            names[sim.name] = index
            link = _fixed_link(sim)
            if link is not None:
                if link in links:
                    raise ValueError(
                        f"sims[{index}]: port link {link} is already used by sims[{links[link]}]; "
                        "give it another link_dir or link_name"
                    )
                links[link] = index
        return self


def _fixed_link(sim: SimSpec) -> str | None:
    """The pty symlink path a sim will create, when it is fixed by its options."""
    if isinstance(sim, SmartPoleRtuSpec | GatewayBusSpec) and sim.link_dir is not None:
        return str(Path(sim.link_dir) / sim.link_name)
    if isinstance(sim, NbIotModemSpec) and sim.link_dir is not None:
        return str(Path(sim.link_dir) / "ttyNB0")
    return None


def parse_scenario(document: Mapping[str, Any], source: str | Path) -> Scenario:
    """Validate a scenario document; :class:`ProfileError` names ``source`` and each path."""
    try:
        return Scenario.model_validate(document)
    except ValidationError as exc:
        raise ProfileError(source, validation_issues(exc, document)) from exc


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario YAML file (duplicate keys are errors too)."""
    return parse_scenario(load_yaml_mapping(path), path)


@dataclass(frozen=True, slots=True)
class Site:
    """The running simulators of a scenario, by name, in file order."""

    scenario: Scenario
    sims: dict[str, RunningSim]

    def sim(self, name: str) -> RunningSim:
        """The simulator ``name``; KeyError with the names there are."""
        try:
            return self.sims[name]
        except KeyError:
            raise KeyError(f"no sim {name!r} (have: {', '.join(self.sims)})") from None


@asynccontextmanager
async def run_scenario(scenario: Scenario) -> AsyncIterator[Site]:
    """Start every simulator of ``scenario`` (in order) and stop them all when the block exits."""
    async with AsyncExitStack() as stack:
        sims: dict[str, RunningSim] = {}
        for spec in scenario.sims:
            seed = spec.seed if spec.seed is not None else scenario.seed
            sims[spec.name] = await stack.enter_async_context(_start(spec, seed))
        yield Site(scenario=scenario, sims=sims)


def _start(spec: SimSpec, seed: int | None) -> contextlib.AbstractAsyncContextManager[RunningSim]:
    opts = spec.model_dump(exclude={"name", "kind", "seed"})
    if isinstance(spec, SmartPoleTcpSpec):
        return start_smart_pole_tcp(spec.name, seed=seed, **opts)
    if isinstance(spec, SmartPoleRtuSpec):
        return start_smart_pole_rtu(spec.name, seed=seed, **opts)
    if isinstance(spec, GatewayBusSpec):
        return start_gateway_bus(spec.name, seed=seed, **opts)
    if isinstance(spec, ManholeCoverSpec):
        return start_manhole_cover(spec.name, seed=seed, **opts)
    if isinstance(spec, NbIotModemSpec):
        return start_nbiot_modem(spec.name, **opts)
    return start_pollution_analyser(spec.name, seed=seed, **opts)


def agent_config(
    site: Site, *, mqtt_host: str = "127.0.0.1", mqtt_port: int = 1883
) -> dict[str, Any]:
    """An edge-agent configuration document (``AgentSettings``) for the running ``site``.

    Each Modbus/CoAP/HJ 212 device becomes one entry (``<sim name>``, or
    ``<sim name>-<profile>`` for the devices of a gateway bus). The NB-IoT modem is an uplink,
    not a field device, so it has no entry.
    """
    devices = [device for sim in site.sims.values() for device in sim.agent_devices()]
    return {
        "agent_id": site.scenario.agent_id,
        "mqtt": {"host": mqtt_host, "port": mqtt_port},
        "devices": devices,
    }
