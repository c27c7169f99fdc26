"""Run-time control of running simulators: one handle per sim, and a JSON-lines endpoint.

Each running simulator of a site is a :class:`RunningSim` (started by the ``start_*`` context
managers): its name, kind and address, :meth:`~RunningSim.inject` mapping a fault name onto
that simulator's own fault API, :meth:`~RunningSim.clear` and :meth:`~RunningSim.status`.

=================================  ================================================================
kind                               faults (options)
=================================  ================================================================
smart_pole_tcp, smart_pole_rtu,    ``no_reply delay exception corrupt_frame truncated garbage
gateway_bus                        disconnect restart`` (count, unit_id, delay_s, code)
manhole_cover                      ``drop unavailable malformed delay`` (delay_s); until cleared
nbiot_modem                        ``no_answer late_answer error garbage`` (command, count, code =
                                   CME code), ``unplug`` (until cleared), ``reboot`` (at once)
pollution_analyser                 ``bad_crc bad_length garbage split no_answer`` (count)
=================================  ================================================================

``count`` 0 means "until cleared" where the simulator supports it.

The endpoint (:class:`ControlServer`) listens on a UNIX socket path or on a TCP port of
127.0.0.1; a client sends one JSON line and reads one JSON line back (:func:`request`)::

    {"op": "fault", "sim": "pole-1", "fault": "no_reply", "count": 1}
    {"ok": true, "result": "no_reply on pole-1: next 1 request(s)"}
    {"op": "status"}   {"op": "clear", "sim": "pole-1"}

Errors: :class:`ControlError` (unknown sim or fault, an option that does not apply, the
endpoint unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware_sim.coap_sensor import ManholeSensorSim, run_manhole_sensor
from firmware_sim.faults import Fault, FaultInjector, TrafficLog
from firmware_sim.gateway import run_gateway_bus
from firmware_sim.modbus_rtu_server import run_smart_pole_rtu
from firmware_sim.nbiot_modem import NbIotModemSim, run_nbiot_modem
from firmware_sim.pollution_analyser import DEFAULT_MN, PollutionAnalyser, run_pollution_analyser
from firmware_sim.pollution_analyser import Fault as AnalyserFault
from firmware_sim.runner import run_smart_pole

__all__ = [
    "DEFAULT_CONTROL",
    "ControlError",
    "ControlServer",
    "FaultRequest",
    "RunningSim",
    "request",
    "start_gateway_bus",
    "start_manhole_cover",
    "start_nbiot_modem",
    "start_pollution_analyser",
    "start_smart_pole_rtu",
    "start_smart_pole_tcp",
]

log = structlog.get_logger(__name__)

#: Where ``run-site`` listens and the client commands connect unless told otherwise.
DEFAULT_CONTROL = str(Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "firmware-sim.sock")  # noqa: S108 - a socket of the current user, like tmux's
_MAX_LINE = 64 * 1024


class ControlError(ValueError):
    """A control request cannot be done (unknown sim or fault, bad option, no endpoint)."""


class FaultRequest(BaseModel):
    """One fault to inject; options a simulator has no use for must stay unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: str = Field(min_length=1)
    count: int | None = Field(default=None, ge=0, description="0: until cleared.")
    unit_id: int | None = Field(default=None, ge=0, le=247)
    delay_s: float | None = Field(default=None, ge=0, le=3600)
    code: int | None = Field(default=None, ge=0, le=255)
    command: str | None = Field(default=None, min_length=1)

    def only(self, kind: str, *allowed: str) -> None:
        """Refuse the options set that ``kind`` cannot use."""
        given = [
            name
            for name in ("count", "unit_id", "delay_s", "code", "command")
            if getattr(self, name) is not None
        ]
        extra = [name for name in given if name not in allowed]
        if extra:
            raise ControlError(
                f"{kind} fault {self.fault!r} takes no {', '.join(extra)} "
                f"(takes: {', '.join(allowed) or 'no options'})"
            )


# -- handles --------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RunningSim:
    """A running simulator of a site, as the CLI and the control endpoint see it."""

    name: str
    kind: str
    address: str
    faults: tuple[str, ...] = ()

    def inject(self, req: FaultRequest) -> str:
        """Apply ``req`` to this simulator; return what was done, in words."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove every fault waiting or in force."""
        raise NotImplementedError

    def pending(self) -> list[str]:
        """The faults waiting or in force, in words."""
        raise NotImplementedError

    def traffic(self) -> dict[str, int]:
        """Recent traffic counts."""
        raise NotImplementedError

    def agent_devices(self) -> list[dict[str, Any]]:
        """The edge-agent ``devices`` entries that reach this simulator."""
        return []

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "address": self.address,
            "faults": self.pending(),
            "traffic": self.traffic(),
        }

    def _unknown(self, fault: str) -> ControlError:
        return ControlError(
            f"{self.kind} sim {self.name!r} has no fault {fault!r} (have: {', '.join(self.faults)})"
        )


@dataclass(kw_only=True)
class ModbusSim(RunningSim):
    """A Modbus simulator (TCP or RTU): faults of :mod:`firmware_sim.faults`."""

    injector: FaultInjector
    log: TrafficLog
    devices: list[dict[str, Any]] = field(default_factory=list)
    faults: tuple[str, ...] = tuple(Fault)

    def inject(self, req: FaultRequest) -> str:
        if req.fault not in self.faults:
            raise self._unknown(req.fault)
        fault = Fault(req.fault)
        req.only(self.kind, "count", "unit_id", "delay_s", "code")
        count = 1 if req.count is None else (req.count or None)
        try:
            self.injector.inject(
                fault,
                count=count,
                unit_id=req.unit_id,
                delay_s=0.5 if req.delay_s is None else req.delay_s,
                code=4 if req.code is None else req.code,
            )
        except ValueError as exc:
            raise ControlError(str(exc)) from exc
        return f"{fault} on {self.name}: {_describe(count, req.unit_id)}"

    def clear(self) -> None:
        self.injector.clear()

    def pending(self) -> list[str]:
        return [f"{r.fault} ({_describe(r.remaining, r.unit_id)})" for r in self.injector.rules]

    def traffic(self) -> dict[str, int]:
        records = self.log.records
        return {
            "requests": sum(1 for r in records if r.direction == "request"),
            "answers": sum(1 for r in records if r.direction == "answer"),
            "faults_applied": len(self.injector.applied),
        }

    def agent_devices(self) -> list[dict[str, Any]]:
        return list(self.devices)


def _describe(count: int | None, unit_id: int | None) -> str:
    what = "every request until cleared" if count is None else f"next {count} request(s)"
    return what if unit_id is None else f"{what} to unit {unit_id}"


@dataclass(kw_only=True)
class CoapSim(RunningSim):
    """The CoAP manhole sensor: switches of :class:`~firmware_sim.coap_sensor.CoapFaults`."""

    sim: ManholeSensorSim
    connect_host: str
    faults: tuple[str, ...] = ("drop", "delay", "unavailable", "malformed")

    def inject(self, req: FaultRequest) -> str:
        faults = self.sim.faults
        if req.fault == "delay":
            req.only(self.kind, "delay_s")
            faults.delay_s = 1.0 if req.delay_s is None else req.delay_s
            return f"delay on {self.name}: answers {faults.delay_s} s late until cleared"
        if req.fault not in self.faults:
            raise self._unknown(req.fault)
        req.only(self.kind)
        setattr(faults, req.fault, True)
        return f"{req.fault} on {self.name}: every request until cleared"

    def clear(self) -> None:
        self.sim.faults.clear()

    def pending(self) -> list[str]:
        faults = self.sim.faults
        out = [name for name in ("drop", "unavailable", "malformed") if getattr(faults, name)]
        if faults.delay_s:
            out.append(f"delay ({faults.delay_s} s)")
        return out

    def traffic(self) -> dict[str, int]:
        return {
            "requests": len(self.sim.requests),
            "sent": len(self.sim.sent),
            "writes": len(self.sim.writes),
        }

    def agent_devices(self) -> list[dict[str, Any]]:
        connection = {"transport": "coap", "host": self.connect_host, "port": self.sim.port}
        return [{"device_id": self.name, "profile": "manhole_cover", "connection": connection}]


@dataclass(kw_only=True)
class ModemSim(RunningSim):
    """The NB-IoT modem: rules of :class:`~firmware_sim.nbiot_modem.SimFaults`, unplug, reboot."""

    sim: NbIotModemSim
    faults: tuple[str, ...] = ("no_answer", "late_answer", "error", "garbage", "unplug", "reboot")

    def inject(self, req: FaultRequest) -> str:
        faults, command = self.sim.faults, req.command or "AT"
        count = 1 if req.count is None else (req.count or -1)
        times = "every command" if count < 0 else f"next {count} command(s)"
        if req.fault in ("unplug", "reboot"):
            req.only(self.kind)
            if req.fault == "unplug":
                self.sim.unplug()
                return f"unplugged {self.name} until cleared"
            self.sim.reboot()
            return f"rebooted {self.name}"
        if req.fault == "no_answer":
            req.only(self.kind, "command", "count")
            faults.no_answer(command, count)
        elif req.fault == "late_answer":
            req.only(self.kind, "command", "count")
            faults.late_answer(command, count)
        elif req.fault == "error":
            req.only(self.kind, "command", "count", "code")
            faults.error(command, req.code, count)
        elif req.fault == "garbage":
            req.only(self.kind, "command")
            times = "next 1 command(s)"
            faults.garbage(command)
        else:
            raise self._unknown(req.fault)
        until = " until cleared" if times == "every command" else ""
        return f"{req.fault} on {self.name}: {times} starting with {command!r}{until}"

    def clear(self) -> None:
        self.sim.faults.clear()
        self.sim.replug()

    def pending(self) -> list[str]:
        out = [] if self.sim.plugged else ["unplugged"]
        for rule in self.sim.faults.rules:
            if rule.late:
                what = "late_answer"
            elif rule.reply:
                what = "error"
            elif rule.before:
                what = "garbage"
            else:
                what = "no_answer"
            left = "until cleared" if rule.count < 0 else f"{rule.count} left"
            out.append(f"{what} {rule.match!r} ({left})")
        return out

    def traffic(self) -> dict[str, int]:
        return {"commands": len(self.sim.commands), "datagrams": len(self.sim.sent_datagrams)}


@dataclass(kw_only=True)
class AnalyserSim(RunningSim):
    """The HJ 212 analyser: counted faults of :meth:`PollutionAnalyser.inject`."""

    sim: PollutionAnalyser
    device: dict[str, Any]
    faults: tuple[str, ...] = get_args(AnalyserFault)

    def inject(self, req: FaultRequest) -> str:
        if req.fault not in self.faults:
            raise self._unknown(req.fault)
        req.only(self.kind, "count")
        count = 1 if req.count is None else req.count
        if count < 1:
            raise ControlError("pollution_analyser faults need a count >= 1")
        self.sim.inject(req.fault, count)  # type: ignore[arg-type]  # checked against the Literal
        return f"{req.fault} on {self.name}: next {count} frame(s)"

    def clear(self) -> None:
        self.sim.faults.clear()

    def pending(self) -> list[str]:
        return [f"{name} ({left} left)" for name, left in self.sim.faults.items() if left > 0]

    def traffic(self) -> dict[str, int]:
        return {"sent": len(self.sim.sent), "received": len(self.sim.received)}

    def agent_devices(self) -> list[dict[str, Any]]:
        return [dict(self.device)]


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


# -- the endpoint ---------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _tcp_port(where: str) -> int | None:
    """``where`` as a TCP port of 127.0.0.1 (all digits), else None (a UNIX socket path)."""
    if where.isdigit():
        port = int(where)
        if not 0 <= port <= 65535:
            raise ControlError(f"control port {port} is not 0-65535")
        return port
    return None


class ControlServer:
    """The control endpoint of a running site: ``async with ControlServer(sims, where):``."""

    def __init__(self, sims: Mapping[str, RunningSim], where: str = DEFAULT_CONTROL) -> None:
        self.sims = sims
        self.where = where
        self.address = where
        self._server: asyncio.Server | None = None
        self._path: Path | None = None

    async def __aenter__(self) -> ControlServer:
        port = _tcp_port(self.where)
        if port is not None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", port, limit=_MAX_LINE
            )
            self.address = str(self._server.sockets[0].getsockname()[1])
        else:
            path = Path(self.where)
            if _is_socket(path):  # a stale socket of a runner that died: take it over
                with contextlib.suppress(OSError):
                    _reader, writer = await asyncio.open_unix_connection(path)
                    writer.close()
                    await writer.wait_closed()
                    raise ControlError(f"{path}: another firmware-sim run-site is listening there")
                _remove(path)
            self._server = await asyncio.start_unix_server(self._serve, path, limit=_MAX_LINE)
            self._path = path
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._path is not None:
            _remove(self._path)
            self._path = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                answer = {"ok": True, "result": self.handle(json.loads(line))}
            except (ControlError, ValueError, TypeError) as exc:
                answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            log.warning("control connection failed", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def handle(self, message: Any) -> Any:
        """Do one request (a decoded JSON object) and return its result."""
        if not isinstance(message, dict):
            raise ControlError("a request is a JSON object")
        op = message.pop("op", None)
        if op == "status":
            return [sim.status() for sim in self.sims.values()]
        sim = self._sim(message.pop("sim", None))
        if op == "clear":
            sim.clear()
            log.info("faults cleared", sim=sim.name)
            return f"cleared every fault of {sim.name}"
        if op == "fault":
            try:
                req = FaultRequest.model_validate(message)
            except ValidationError as exc:
                raise ControlError(_first_issue(exc)) from exc
            done = sim.inject(req)
            log.info("fault injected", sim=sim.name, fault=req.fault, result=done)
            return done
        raise ControlError(f"unknown op {op!r} (have: fault, clear, status)")

    def _sim(self, name: object) -> RunningSim:
        if not isinstance(name, str) or name not in self.sims:
            raise ControlError(f"no sim {name!r} (have: {', '.join(self.sims)})")
        return self.sims[name]


def _is_socket(path: Path) -> bool:
    return path.is_socket()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _first_issue(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


async def request(
    message: Mapping[str, Any], where: str = DEFAULT_CONTROL, *, timeout_s: float = 5.0
) -> Any:
    """Send one request to a running ``run-site`` and return its result; ControlError if the
    endpoint refuses it or cannot be reached."""
    port = _tcp_port(where)
    try:
        async with asyncio.timeout(timeout_s):
            if port is not None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_MAX_LINE)
            else:
                reader, writer = await asyncio.open_unix_connection(where, limit=_MAX_LINE)
            try:
                writer.write(json.dumps(dict(message)).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise ControlError(
            f"no firmware-sim run-site answering at {where} ({exc.__class__.__name__}: {exc})"
        ) from exc
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"{where}: not a control endpoint (answer {line[:60]!r})") from exc
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise ControlError(str(answer.get("error") if isinstance(answer, dict) else answer))
    return answer.get("result")
