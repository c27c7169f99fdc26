"""A community gateway's RS-485 bus: five Modbus RTU devices on one simulated line.

========================  =======  ==========================================================
profile                   unit id  physics
========================  =======  ==========================================================
``water_meter``           1        flow with morning and evening peaks; the volume integrates
                                   it (only grows)
``electricity_meter``     2        230 V with noise, a daily load curve, power factor, 50 Hz;
                                   import energy integrates power (only grows)
``barrier_gate``          3        a write of 1/2 to ``command`` opens/closes the boom (the
                                   controller clears it); the position moves over
                                   ``travel_s``; closing is refused while a vehicle is on the
                                   loop; vehicles come and go while it is open
``parking_sensor``        4        eight bays filling by day and emptying at night, counts
``access_controller``     5        card swipes (most granted) open the door for a while and
                                   count events; a write of the ``unlock`` coil releases the
                                   lock for ``unlock_s`` and logs a remote unlock
========================  =======  ==========================================================

Deterministic for a ``seed`` and a ``clock`` (seconds since the epoch): each model draws from
its own ``random.Random`` seeded from ``seed`` and its name, and rates depend on the elapsed
clock time, so a test can step the clock by hand (``tick_s=None``)::

    async with run_gateway_bus(seed=1, tick_s=None, clock=lambda: now[0]) as bus:
        bus.port_path                       # open it with ModbusRtuSettings(port=...)
        bus.image(3).get("state")           # or bus.image_of("barrier_gate")
        now[0] += 10; bus.step()            # advance the physics
        bus.faults.inject(Fault.no_reply, unit_id=1)
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from device_profiles import Value, load_builtin_profile
from firmware_sim.modbus_rtu_server import ModbusRtuSimServer, RtuLineViews, UnitWrite
from firmware_sim.register_image import RegisterImage, WriteRecord
from firmware_sim.ticking import ticking

__all__ = [
    "DEFAULT_UNITS",
    "AccessControllerModel",
    "BarrierGateModel",
    "DeviceModel",
    "ElectricityMeterModel",
    "GatewayBusSim",
    "ParkingSensorModel",
    "WaterMeterModel",
    "run_gateway_bus",
]

#: Unit id of each device on the gateway's bus.
DEFAULT_UNITS: dict[str, int] = {
    "water_meter": 1,
    "electricity_meter": 2,
    "barrier_gate": 3,
    "parking_sensor": 4,
    "access_controller": 5,
}
_MAX_STEP_S = 3600.0  # longer gaps are integrated as one hour of random events


class DeviceModel:
    """Physics behind one register image: ``step()`` advances it to ``clock()``."""

    def __init__(
        self,
        image: RegisterImage,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.image = image
        self.clock = clock
        name = image.profile.name
        self.rng = random.Random(None if seed is None else f"{seed}/{name}")  # noqa: S311
        self._last = clock()
        #: Points pinned to a value by :meth:`force`.
        self.forced: dict[str, Value] = {}

    def step(self) -> None:
        """Advance to ``clock()`` and write the points into the image."""
        now = self.clock()
        elapsed = min(_MAX_STEP_S, max(0.0, now - self._last))
        self._last = max(self._last, now)
        self.advance(elapsed, (now / 3600.0) % 24.0)
        for name, value in self.forced.items():
            self.image.set(name, value)

    def force(self, name: str, value: Value) -> None:
        """Pin point ``name`` to an engineering value now and at every step."""
        if name not in self.image.profile.points:
            raise KeyError(f"{self.image.profile.name} has no point '{name}'")
        self.forced[name] = value
        self.image.set(name, value)

    def release(self, name: str) -> None:
        """Let the physics drive point ``name`` again (from its next step)."""
        self.forced.pop(name, None)

    def advance(self, elapsed_s: float, hour: float) -> None:
        """The physics of ``elapsed_s`` seconds, ending at ``hour`` (UTC, 0-24)."""

    def chance(self, rate_per_h: float, elapsed_s: float) -> bool:
        """True with the probability of at least one event of a Poisson process."""
        return self.rng.random() < 1.0 - math.exp(-rate_per_h * elapsed_s / 3600.0)

    def put(self, name: str, value: Value) -> None:
        """Write an engineering value, clamped to the point's declared range."""
        point = self.image.profile.points[name]
        if name in self.forced:
            value = self.forced[name]
        elif isinstance(value, float):
            if point.min is not None:
                value = max(point.min, value)
            if point.max is not None:
                value = min(point.max, value)
        self.image.set(name, value)


def _daily(hour: float, peaks: tuple[float, ...], width_h: float = 1.5) -> float:
    """0..1: bumps around each peak hour."""
    return max(math.exp(-(((hour - p + 12) % 24 - 12) ** 2) / (2 * width_h**2)) for p in peaks)


class WaterMeterModel(DeviceModel):
    """A household supply: morning and evening peaks, a trickle at night."""

    def __init__(
        self,
        image: RegisterImage,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(image, seed=seed, clock=clock)
        self.volume_m3 = round(self.rng.uniform(100.0, 2000.0), 3)
        self.flow_m3h = 0.0
        self.put("battery_voltage", round(self.rng.uniform(3.55, 3.65), 3))
        self.put("reverse_volume", 0.0)
        self.step()

    def advance(self, elapsed_s: float, hour: float) -> None:
        self.volume_m3 += self.flow_m3h * elapsed_s / 3600.0
        demand = 0.05 + 2.0 * _daily(hour, (7.5, 19.5)) + 0.4 * _daily(hour, (13.0,), 2.5)
        self.flow_m3h = max(0.0, demand * (1 + self.rng.gauss(0.0, 0.1)))
        self.put("total_volume", self.volume_m3)
        self.put("flow_rate", self.flow_m3h)
        self.put("water_temperature", 14.0 + 2.0 * math.sin(2 * math.pi * (hour - 9) / 24))
        battery = self.image.get("battery_voltage")
        assert isinstance(battery, float)
        self.put("battery_voltage", battery - 1e-9 * elapsed_s)
        for flag in ("leak_alarm", "reverse_flow", "empty_pipe"):
            self.put(flag, False)
        self.put("low_battery", battery < 3.2)


class ElectricityMeterModel(DeviceModel):
    """A small building's supply: base load plus a daily curve; energy integrates power."""

    def __init__(
        self,
        image: RegisterImage,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(image, seed=seed, clock=clock)
        self.import_kwh = round(self.rng.uniform(1000.0, 20000.0), 1)
        self.power_w = 0.0
        self.put("export_energy", 0.0)
        self.step()

    def advance(self, elapsed_s: float, hour: float) -> None:
        self.import_kwh += self.power_w * elapsed_s / 3_600_000.0
        rng = self.rng
        voltage = 230.0 + 2.0 * math.sin(2 * math.pi * (hour - 4) / 24) + rng.gauss(0.0, 0.8)
        load = 300.0 + 2500.0 * _daily(hour, (8.0, 19.0), 2.0)
        self.power_w = max(20.0, load * (1 + rng.gauss(0.0, 0.05)))
        pf = min(1.0, max(0.8, 0.95 + rng.gauss(0.0, 0.01)))
        self.put("voltage", voltage)
        self.put("active_power", self.power_w)
        self.put("power_factor", pf)
        self.put("current", self.power_w / (voltage * pf))
        self.put("frequency", 50.0 + rng.gauss(0.0, 0.01))
        self.put("import_energy", self.import_kwh)


class BarrierGateModel(DeviceModel):
    """A boom barrier: commands in the ``command`` register, motion over ``travel_s``."""

    CLOSED, OPENING, OPEN, CLOSING, FAULT = 0, 1, 2, 3, 4

    def __init__(
        self,
        image: RegisterImage,
        *,
        travel_s: float = 4.0,
        vehicles_per_h: float = 20.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(image, seed=seed, clock=clock)
        self.travel_s = travel_s
        self.vehicles_per_h = vehicles_per_h
        self.state = self.CLOSED
        self.position = 0.0
        self.open_count = self.rng.randrange(1000, 50_000)
        self.vehicle_present = False
        image.add_listener(self._on_write)
        self._publish()

    def advance(self, elapsed_s: float, hour: float) -> None:
        speed = 100.0 / self.travel_s
        if self.state == self.OPENING:
            self.position = min(100.0, self.position + speed * elapsed_s)
            if self.position >= 100.0:
                self.state = self.OPEN
        elif self.state == self.CLOSING:
            self.position = max(0.0, self.position - speed * elapsed_s)
            if self.position <= 0.0:
                self.state = self.CLOSED
        if self.state == self.OPEN:  # a vehicle drives onto the loop, then through
            if self.vehicle_present:
                self.vehicle_present = not self.chance(720.0, elapsed_s)  # ~5 s on the loop
            else:
                self.vehicle_present = self.chance(self.vehicles_per_h, elapsed_s)
        else:
            self.vehicle_present = False
        self._publish()

    def _on_write(self, record: WriteRecord) -> None:
        if record.point != "command":
            return
        self.step()  # catch up to now before the command acts
        if record.raw == 1 and self.state in (self.CLOSED, self.CLOSING):
            self.state = self.OPENING
            self.open_count += 1
        elif (
            record.raw == 2
            and self.state in (self.OPEN, self.OPENING)
            and not self.vehicle_present  # the safety loop keeps the boom up
        ):
            self.state = self.CLOSING
        self.image.set("command", 0)  # accepted: the controller clears the register
        self._publish()

    def _publish(self) -> None:
        moving = self.state in (self.OPENING, self.CLOSING)
        self.put("state", self.state)
        self.put("position", round(self.position))
        self.put("open_count", self.open_count)
        self.put("motor_current", 1.5 + self.rng.gauss(0.0, 0.05) if moving else 0.0)
        self.put("vehicle_present", self.vehicle_present)
        self.put("obstruction", False)


class ParkingSensorModel(DeviceModel):
    """Eight bays: cars arrive more by day, leave after an hour or two on average."""

    BAYS = 8

    def __init__(
        self,
        image: RegisterImage,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(image, seed=seed, clock=clock)
        self.occupied = [self.rng.random() < 0.5 for _ in range(self.BAYS)]
        self._publish()

    def advance(self, elapsed_s: float, hour: float) -> None:
        day = 8.0 <= hour < 20.0
        arrive, leave = (1.5, 0.7) if day else (0.1, 0.15)
        for bay, taken in enumerate(self.occupied):
            if self.chance(leave if taken else arrive, elapsed_s):
                self.occupied[bay] = not taken
        self._publish()

    def _publish(self) -> None:
        for bay, taken in enumerate(self.occupied, start=1):
            self.put(f"bay_{bay}", taken)
        count = sum(self.occupied)
        self.put("occupied_count", count)
        self.put("free_count", self.BAYS - count)


class AccessControllerModel(DeviceModel):
    """One door: card swipes (90 % granted), door open a few seconds, remote unlocks."""

    NONE, GRANTED, DENIED, FORCED, HELD_OPEN, REMOTE_UNLOCK = 0, 1, 2, 3, 4, 5

    def __init__(
        self,
        image: RegisterImage,
        *,
        swipes_per_h: float = 30.0,
        unlock_s: float = 5.0,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(image, seed=seed, clock=clock)
        self.swipes_per_h = swipes_per_h
        self.unlock_s = unlock_s
        self.granted = self.rng.randrange(100, 10_000)
        self.denied = self.rng.randrange(0, 500)
        self.events = self.granted + self.denied
        self.last_event = self.NONE
        self.last_card = 0
        self.unlocked_until = 0.0
        image.add_listener(self._on_write)
        self._publish()

    def advance(self, elapsed_s: float, hour: float) -> None:
        now = self.clock()
        rate = self.swipes_per_h if 7.0 <= hour < 21.0 else self.swipes_per_h / 10
        if self.chance(rate, elapsed_s):
            self.last_card = self.rng.randrange(100_000, 9_999_999)
            if self.rng.random() < 0.9:
                self._event(self.GRANTED)
                self.granted += 1
                self.unlocked_until = max(self.unlocked_until, now + self.unlock_s)
            else:
                self._event(self.DENIED)
                self.denied += 1
        if now >= self.unlocked_until and self.image.get("unlock") is True:
            self.image.set("unlock", False)  # relocked: the controller clears the coil
        self._publish()

    def _on_write(self, record: WriteRecord) -> None:
        if record.point == "unlock" and record.raw is True:
            self.unlocked_until = self.clock() + self.unlock_s
            self._event(self.REMOTE_UNLOCK)
            self._publish()

    def _event(self, kind: int) -> None:
        self.events += 1
        self.last_event = kind

    def _publish(self) -> None:
        unlocked = self.clock() < self.unlocked_until
        self.put("door_locked", not unlocked)
        self.put("door_open", unlocked and self.last_event in (self.GRANTED, self.REMOTE_UNLOCK))
        self.put("event_count", self.events)
        self.put("granted_count", self.granted)
        self.put("denied_count", self.denied)
        self.put("last_event", self.last_event)
        self.put("last_card", self.last_card)


_MODELS: dict[str, type[DeviceModel]] = {
    "water_meter": WaterMeterModel,
    "electricity_meter": ElectricityMeterModel,
    "barrier_gate": BarrierGateModel,
    "parking_sensor": ParkingSensorModel,
    "access_controller": AccessControllerModel,
}


@dataclass(frozen=True, slots=True)
class GatewayBusSim(RtuLineViews):
    """A running gateway bus: the line, and each device's image and model (``port_path``,
    ``devices``, ``faults``, ``traffic``: :class:`RtuLineViews`)."""

    server: ModbusRtuSimServer
    models: dict[str, DeviceModel]
    units: dict[str, int]

    def image(self, unit_id: int) -> RegisterImage:
        return self.server.image(unit_id)

    def image_of(self, profile_name: str) -> RegisterImage:
        return self.server.image(self.units[profile_name])

    @property
    def writes(self) -> list[UnitWrite]:
        return self.server.writes

    def step(self) -> None:
        """Advance every device's physics to the clock."""
        for model in self.models.values():
            model.step()

    async def run(self, tick_s: float) -> None:
        """Step every ``tick_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(tick_s)
            self.step()


@asynccontextmanager
async def run_gateway_bus(
    *,
    seed: int | None = None,
    units: Mapping[str, int] | None = None,
    tick_s: float | None = 1.0,
    clock: Callable[[], float] = time.time,
    name: str = "ttyGW0",
    directory: str | None = None,
) -> AsyncIterator[GatewayBusSim]:
    """Serve the gateway's devices on one simulated RS-485 line until the block exits.

    ``units`` maps profile names to unit ids (default :data:`DEFAULT_UNITS`; leave a device
    out to leave it off the bus). ``tick_s=None`` never steps on its own (call
    ``bus.step()``); writes act at once either way.
    """
    wanted = dict(DEFAULT_UNITS if units is None else units)
    unknown = sorted(set(wanted) - set(_MODELS))
    if unknown:
        raise ValueError(f"no gateway device model for {unknown}; known: {sorted(_MODELS)}")
    models: dict[str, DeviceModel] = {}
    for profile_name in wanted:
        image = RegisterImage(load_builtin_profile(profile_name), clock=clock)
        models[profile_name] = _MODELS[profile_name](image, seed=seed, clock=clock)
    server = ModbusRtuSimServer(
        {wanted[n]: m.image for n, m in models.items()}, name=name, directory=directory, seed=seed
    )
    sim = GatewayBusSim(server=server, models=models, units=wanted)
    async with server, ticking(sim.run, tick_s, name="gateway bus tick"):
        yield sim
