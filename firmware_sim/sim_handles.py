"""One handle per running simulator: its name, kind and address, and its faults by name.

A :class:`RunningSim` maps a :class:`FaultRequest` onto its simulator's own fault API
(:meth:`~RunningSim.inject`), clears it and reports its status; the faults each kind takes are
listed in :mod:`firmware_sim.control`.

One rule for every kind: a fault lasts until cleared, unless the request gives a ``count`` of
N >= 1, when it hits the next N requests (frames, commands) and then ends by itself (a Modbus
``restart`` or ``disconnect`` until cleared hits every request: a boot loop, a flapping link).
The modem's ``reboot`` is an action, done once at once; its ``unplug`` lasts until cleared. The ``start_*`` context managers
(:mod:`firmware_sim.sim_starters`) make them, the control endpoint
(:mod:`firmware_sim.control_endpoint`) drives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from device_profiles import DeviceProfile, Value
from firmware_sim.coap_sensor import CoapFault, ManholeSensorSim
from firmware_sim.faults import Fault, FaultInjector, TrafficLog
from firmware_sim.nbiot_modem import NbIotModemSim
from firmware_sim.point_values import PointValueError, parse_assignment, parse_point_value
from firmware_sim.pollution_analyser import Fault as AnalyserFault
from firmware_sim.pollution_analyser import PollutionAnalyser

__all__ = [
    "AnalyserSim",
    "CoapSim",
    "ControlError",
    "FaultRequest",
    "ModbusSim",
    "ModemSim",
    "RunningSim",
]


class ControlError(ValueError):
    """A control request cannot be done (unknown sim or fault, bad option, no endpoint)."""


class ForcedPoints(Protocol):
    """A device model whose points can be pinned to a value (``firmware-sim set``)."""

    forced: dict[str, Value]

    def force(self, name: str, value: Value) -> None: ...

    def release(self, name: str) -> None: ...


class FaultRequest(BaseModel):
    """One fault to inject; options a simulator has no use for must stay unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: str = Field(min_length=1)
    count: int | None = Field(
        default=None,
        ge=1,
        description="Hit the next N requests, frames or commands; unset: until cleared.",
    )
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

    def models(self) -> dict[str, tuple[DeviceProfile, ForcedPoints]]:
        """The devices whose points can be set, by device id."""
        return {}

    def set_points(self, device: str | None, assignments: list[str]) -> str:
        """Pin points (``POINT=VALUE``) of one of its devices; they hold until released."""
        profile, model = self._model(device)
        values = {}
        try:
            for text in assignments:
                name, raw = parse_assignment(text)
                values[name] = parse_point_value(profile, name, raw)
        except PointValueError as exc:
            raise ControlError(str(exc)) from None
        if not values:
            raise ControlError("give at least one POINT=VALUE")
        for name, value in values.items():
            model.force(name, value)
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        return f"{shown} on {self.name}: held until released (firmware-sim release)"

    def release_points(self, device: str | None, names: list[str]) -> str:
        """Let the physics drive the named points again (none named: every set point)."""
        profile, model = self._model(device)
        unknown = [n for n in names if n not in profile.points]
        if unknown:
            raise ControlError(f"{profile.name} has no point {unknown[0]!r}")
        chosen = names or list(model.forced)
        for name in chosen:
            model.release(name)
        return f"released {', '.join(chosen) or 'nothing (no point was set)'} on {self.name}"

    def _model(self, device: str | None) -> tuple[DeviceProfile, ForcedPoints]:
        models = self.models()
        if not models:
            raise ControlError(f"{self.kind} sim {self.name!r} has no points to set")
        if device is None:
            if len(models) > 1:
                raise ControlError(
                    f"{self.name} has several devices: give --device (one of {', '.join(models)})"
                )
            return next(iter(models.values()))
        if device not in models:
            raise ControlError(f"{self.name} has no device {device!r} (have: {', '.join(models)})")
        return models[device]

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
    #: device id -> (profile, model) of the devices whose points ``set`` pins
    settable: dict[str, tuple[DeviceProfile, ForcedPoints]] = field(default_factory=dict)

    def models(self) -> dict[str, tuple[DeviceProfile, ForcedPoints]]:
        return self.settable

    def inject(self, req: FaultRequest) -> str:
        if req.fault not in self.faults:
            raise self._unknown(req.fault)
        fault = Fault(req.fault)
        req.only(self.kind, "count", "unit_id", "delay_s", "code")
        count = req.count
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
        faults = [f"{r.fault} ({_describe(r.remaining, r.unit_id)})" for r in self.injector.rules]
        held = [
            f"set {device}: {name}={value}"
            for device, (_, model) in self.settable.items()
            for name, value in model.forced.items()
        ]
        return faults + held

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
    faults: tuple[str, ...] = get_args(CoapFault)

    def inject(self, req: FaultRequest) -> str:
        if req.fault not in self.faults:
            raise self._unknown(req.fault)
        fault = cast(CoapFault, req.fault)  # one of get_args(CoapFault), checked above
        if fault == "delay":
            req.only(self.kind, "delay_s", "count")
            delay_s = 1.0 if req.delay_s is None else req.delay_s
            self.sim.faults.inject(fault, req.count, delay_s=delay_s)
            return f"delay on {self.name}: {delay_s} s late, {_describe(req.count, None)}"
        req.only(self.kind, "count")
        self.sim.faults.inject(fault, req.count)
        return f"{fault} on {self.name}: {_describe(req.count, None)}"

    def clear(self) -> None:
        self.sim.faults.clear()

    def pending(self) -> list[str]:
        faults = self.sim.faults
        return [
            f"{f'delay {faults.delay_s} s' if name == 'delay' else name} "
            f"({_describe(faults.counted.get(name), None)})"
            for name in get_args(CoapFault)
            if faults.active(name)
        ]

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
        count = -1 if req.count is None else req.count  # the modem's rules: -1 is forever
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
            req.only(self.kind, "command", "count")
            faults.garbage(command, count=count)
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
        self.sim.inject(req.fault, req.count)  # type: ignore[arg-type]  # checked against the Literal
        times = "every frame until cleared" if req.count is None else f"next {req.count} frame(s)"
        return f"{req.fault} on {self.name}: {times}"

    def clear(self) -> None:
        self.sim.faults.clear()

    def pending(self) -> list[str]:
        return [
            f"{name} ({'until cleared' if left is None else f'{left} left'})"
            for name, left in self.sim.faults.items()
        ]

    def traffic(self) -> dict[str, int]:
        return {"sent": len(self.sim.sent), "received": len(self.sim.received)}

    def agent_devices(self) -> list[dict[str, Any]]:
        return [dict(self.device)]
