"""Physics of a smart pole controller (profile ``smart_pole``), written into its register image.

Deterministic for a given ``seed`` and ``clock``: every random draw comes from one
``random.Random(seed)`` and the time of day from the injected clock (seconds since the epoch).

* environment: illuminance follows the sun (dark at night, tens of klx at noon, drifting
  cloud cover), temperature and humidity a daily cycle, PM2.5 a mean-reverting random walk,
  sound level louder by day, supply voltage 230 V with noise, tilt ~0.3°;
* lamp: power = rated power x dimming / 100 while ``lamp_on`` (0 W when off), current =
  power / voltage, and the energy counter integrates power over time (it only grows);
* a Modbus write to ``lamp_on`` or ``dimming`` updates power and current at once, before the
  next tick; :meth:`SmartPoleModel.run` ticks every ``tick_s`` seconds;
* status: door closed, one-key alarm off, no faults; :meth:`SmartPoleModel.force` pins any
  point to a value (open the door, press the alarm, tilt the pole) until released.

:class:`SmartPoleViews` is what the running pole simulators (Modbus TCP:
:class:`~firmware_sim.runner.SmartPoleSim`, RTU: :class:`~firmware_sim.modbus_rtu_server.SmartPoleRtuSim`)
show of their image and model alike.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable

from device_profiles import DeviceProfile, Value
from firmware_sim.register_image import RegisterImage, WriteRecord

__all__ = ["SmartPoleModel", "SmartPoleViews"]

_DAY_S = 86400.0
_LAMP_POINTS = ("lamp_on", "dimming")


class SmartPoleModel:
    """The simulated pole behind a :class:`RegisterImage` of the ``smart_pole`` profile."""

    def __init__(
        self,
        image: RegisterImage,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        rated_power_w: float = 150.0,
        peak_illuminance_lx: float = 80_000.0,
        utc_offset_h: float = 0.0,
    ) -> None:
        self.image = image
        self.clock = clock
        self.rng = random.Random(seed)  # noqa: S311 - physics noise, not cryptography
        self.rated_power_w = rated_power_w
        self.peak_illuminance_lx = peak_illuminance_lx
        self.utc_offset_h = utc_offset_h
        #: Points pinned to a value by :meth:`force`.
        self.forced: dict[str, Value] = {}
        self.energy_kwh = round(self.rng.uniform(500.0, 5000.0), 2)
        self.power_w = 0.0
        self.voltage_v = 230.0
        self._cloud = self.rng.uniform(0.6, 1.0)
        self._pm25 = self.rng.uniform(15.0, 45.0)
        self._last = clock()
        image.set("lamp_on", True)
        image.set("dimming", 100)
        image.add_listener(self._on_write)
        self.step()

    # -- control --------------------------------------------------------------------------

    def force(self, name: str, value: Value) -> None:
        """Pin point ``name`` to an engineering value now and at every tick."""
        if name not in self.image.profile.points:
            raise KeyError(f"smart_pole has no point '{name}'")
        self.forced[name] = value
        self.step()

    def release(self, name: str) -> None:
        """Let the physics drive point ``name`` again."""
        self.forced.pop(name, None)
        self.step()

    async def run(self, tick_s: float = 1.0) -> None:
        """Tick every ``tick_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(tick_s)
            self.step()

    def step(self) -> None:
        """Advance the physics to ``clock()`` and write every point into the image."""
        now = self.clock()
        self._integrate(now)
        hour = ((now / 3600.0) + self.utc_offset_h) % 24.0
        self._environment(hour)
        self._lamp()
        for name, value in self.forced.items():
            self.image.set(name, value)

    # -- physics --------------------------------------------------------------------------

    def _environment(self, hour: float) -> None:
        rng = self.rng
        daily = math.sin(2 * math.pi * (hour - 9.0) / 24.0)  # +1 at 15:00, -1 at 03:00
        sun = math.sin(math.pi * (hour - 6.0) / 12.0) if 6.0 < hour < 18.0 else 0.0
        self._cloud = min(1.0, max(0.3, self._cloud + rng.gauss(0.0, 0.01)))
        lux = self.peak_illuminance_lx * sun**1.2 * self._cloud * (1 + rng.gauss(0.0, 0.02))
        self._put("illuminance", max(0.0, lux + abs(rng.gauss(0.0, 0.3))))
        self._put("temperature", 18.0 + 6.0 * daily + rng.gauss(0.0, 0.1))
        self._put("humidity", 65.0 - 20.0 * daily + rng.gauss(0.0, 0.5))
        self._pm25 = max(0.0, self._pm25 + 0.05 * (35.0 - self._pm25) + rng.gauss(0.0, 1.0))
        self._put("pm25", self._pm25)
        self._put("noise", 52.0 + 12.0 * daily + rng.gauss(0.0, 2.0))
        self.voltage_v = 230.0 + 1.5 * daily + rng.gauss(0.0, 0.8)
        self._put("voltage", self.voltage_v)
        self._put("supply_fault", not 207.0 <= self.voltage_v <= 253.0)
        self._put("tilt", 0.3 + rng.gauss(0.0, 0.02))
        self._put("door_open", False)
        self._put("one_key_alarm", False)
        self._put("lamp_fault", False)

    def _lamp(self) -> None:
        """Power and current from lamp_on and dimming (as the client last wrote them)."""
        lamp_on = self._value("lamp_on") is True
        dimming = self._value("dimming")
        level = min(100.0, max(0.0, float(dimming))) if isinstance(dimming, int | float) else 0.0
        if lamp_on and self._value("lamp_fault") is not True:
            self.power_w = self.rated_power_w * level / 100.0 * (1 + self.rng.gauss(0.0, 0.003))
        else:
            self.power_w = 0.0
        self._put("power", max(0.0, self.power_w))
        self._put("current", max(0.0, self.power_w) / self.voltage_v)
        self._put("energy", self.energy_kwh)

    def _integrate(self, now: float) -> None:
        """Add the energy used since the last update at the power then in force."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self.energy_kwh += self.power_w * elapsed / 3600.0 / 1000.0

    def _on_write(self, record: WriteRecord) -> None:
        if record.point in _LAMP_POINTS:
            self._integrate(self.clock())
            self._lamp()

    # -- helpers --------------------------------------------------------------------------

    def _value(self, name: str) -> Value:
        return self.forced[name] if name in self.forced else self.image.get(name)

    def _put(self, name: str, value: Value) -> None:
        """Write a computed value, clamped to the point's declared range."""
        point = self.image.profile.points[name]
        if name in self.forced:
            value = self.forced[name]
        elif isinstance(value, float):
            if point.min is not None:
                value = max(point.min, value)
            if point.max is not None:
                value = min(point.max, value)
        self.image.set(name, value)


class SmartPoleViews:
    """Accessors of a running smart pole simulator (a frozen dataclass with these fields)."""

    __slots__ = ()

    image: RegisterImage
    model: SmartPoleModel
    unit_id: int

    @property
    def writes(self) -> list[WriteRecord]:
        """What Modbus clients wrote to the pole."""
        return self.image.writes

    @property
    def profile(self) -> DeviceProfile:
        return self.image.profile
