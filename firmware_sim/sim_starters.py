"""Start one simulator of a site: ``async with start_<kind>(name, ...) as sim``.

Each ``start_*`` context manager runs its simulator (``run_*``) until the block exits and yields
its :class:`~firmware_sim.sim_handles.RunningSim`, with the address it serves on and the
edge-agent ``devices`` entries that reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from firmware_sim.coap_sensor import run_manhole_sensor
from firmware_sim.gateway import run_gateway_bus
from firmware_sim.modbus_rtu_server import run_smart_pole_rtu
from firmware_sim.nbiot_modem import run_nbiot_modem
from firmware_sim.pollution_analyser import DEFAULT_MN, run_pollution_analyser
from firmware_sim.runner import run_smart_pole
from firmware_sim.sim_handles import AnalyserSim, CoapSim, ModbusSim, ModemSim, RunningSim

__all__ = [
    "start_gateway_bus",
    "start_manhole_cover",
    "start_nbiot_modem",
    "start_pollution_analyser",
    "start_smart_pole_rtu",
    "start_smart_pole_tcp",
]


def _connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


@asynccontextmanager
async def start_smart_pole_tcp(
    name: str,
    *,
    seed: int | None,
    host: str,
    port: int,
    unit_id: int,
    tick_s: float | None,
    utc_offset_h: float,
) -> AsyncIterator[RunningSim]:
    async with run_smart_pole(
        seed=seed, host=host, port=port, unit_id=unit_id, tick_s=tick_s, utc_offset_h=utc_offset_h
    ) as sim:
        connection = {
            "transport": "modbus_tcp",
            "host": _connect_host(sim.host),
            "port": sim.port,
            "unit_id": unit_id,
        }
        yield ModbusSim(
            name=name,
            kind="smart_pole_tcp",
            address=f"{sim.endpoint} unit {unit_id}",
            injector=sim.server.faults,
            log=sim.server.traffic,
            devices=[{"device_id": name, "profile": "smart_pole", "connection": connection}],
            settable={name: (sim.model.image.profile, sim.model)},
        )


def _rtu_connection(port: str, unit_id: int) -> dict[str, Any]:
    # a pty ignores the speed; the fastest usual one keeps the driver's frame gaps short
    return {"transport": "modbus_rtu", "port": port, "baudrate": 115200, "unit_id": unit_id}


@asynccontextmanager
async def start_smart_pole_rtu(
    name: str,
    *,
    seed: int | None,
    unit_id: int,
    tick_s: float | None,
    utc_offset_h: float,
    link_dir: str | None,
    link_name: str,
) -> AsyncIterator[RunningSim]:
    async with run_smart_pole_rtu(
        seed=seed,
        unit_id=unit_id,
        tick_s=tick_s,
        utc_offset_h=utc_offset_h,
        name=link_name,
        directory=link_dir,
    ) as sim:
        connection = _rtu_connection(sim.port_path, unit_id)
        yield ModbusSim(
            name=name,
            kind="smart_pole_rtu",
            address=f"modbus-rtu://{sim.port_path} unit {unit_id}",
            injector=sim.faults,
            log=sim.traffic,
            devices=[{"device_id": name, "profile": "smart_pole", "connection": connection}],
            settable={name: (sim.model.image.profile, sim.model)},
        )


@asynccontextmanager
async def start_gateway_bus(
    name: str,
    *,
    seed: int | None,
    units: Mapping[str, int] | None,
    tick_s: float | None,
    link_dir: str | None,
    link_name: str,
) -> AsyncIterator[RunningSim]:
    async with run_gateway_bus(
        seed=seed, units=units, tick_s=tick_s, name=link_name, directory=link_dir
    ) as bus:
        ids = sorted(bus.units.values())
        span = (
            f"units {ids[0]}-{ids[-1]}"
            if ids == list(range(ids[0], ids[-1] + 1))
            else ("units " + ",".join(map(str, ids)))
        )
        devices = [
            {
                "device_id": f"{name}-{profile}",
                "profile": profile,
                "connection": _rtu_connection(bus.port_path, unit),
            }
            for profile, unit in bus.units.items()
        ]
        yield ModbusSim(
            name=name,
            kind="gateway_bus",
            address=f"modbus-rtu://{bus.port_path} {span}",
            injector=bus.faults,
            log=bus.traffic,
            devices=devices,
            settable={
                f"{name}-{profile}": (model.image.profile, model)
                for profile, model in bus.models.items()
            },
        )


@asynccontextmanager
async def start_manhole_cover(
    name: str, *, seed: int | None, host: str, port: int, tick_s: float | None, max_age_s: int
) -> AsyncIterator[RunningSim]:
    async with run_manhole_sensor(
        seed=seed, host=host, port=port, tick_s=tick_s, max_age_s=max_age_s
    ) as sim:
        yield CoapSim(
            name=name,
            kind="manhole_cover",
            address=sim.endpoint,
            sim=sim,
            connect_host=_connect_host(sim.host),
        )


@asynccontextmanager
async def start_nbiot_modem(
    name: str,
    *,
    link_dir: str | None,
    register_after_polls: int,
    echo: bool,
    csq: int,
    roaming: bool,
    bind_host: str,
) -> AsyncIterator[RunningSim]:
    async with run_nbiot_modem(
        link_dir=link_dir,
        register_after_polls=register_after_polls,
        echo=echo,
        csq=csq,
        roaming=roaming,
        bind_host=bind_host,
    ) as sim:
        yield ModemSim(name=name, kind="nbiot_modem", address=f"at://{sim.port_path}", sim=sim)


@asynccontextmanager
async def start_pollution_analyser(
    name: str,
    *,
    seed: int | None,
    transport: str,
    host: str,
    port: int,
    mn: str | None,
    rtd_interval_s: float | None,
) -> AsyncIterator[RunningSim]:
    mn = mn or DEFAULT_MN
    async with run_pollution_analyser(
        seed=seed,
        mn=mn,
        transport="tcp_server" if transport == "tcp_server" else "pty",
        host=host,
        port=port,
        rtd_interval_s=rtd_interval_s,
    ) as sim:
        connection: dict[str, Any]
        if transport == "tcp_server":
            address = f"hj212-tcp://{sim.host}:{sim.port}"
            connection = {
                "transport": "hj212_tcp",
                "host": _connect_host(sim.host),
                "port": sim.port,
                "mn": mn,
            }
        else:
            address = f"hj212-serial://{sim.pty_path}"
            connection = {"transport": "hj212_serial", "port": sim.pty_path, "mn": mn}
        device = {"device_id": name, "profile": "pollution_monitor", "connection": connection}
        yield AnalyserSim(
            name=name, kind="pollution_analyser", address=address, sim=sim, device=device
        )
