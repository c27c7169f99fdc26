"""Run a simulated device: register image + physics + Modbus TCP server, in one ``async with``.

::

    async with run_smart_pole(seed=1, port=0, tick_s=1.0) as sim:
        sim.host, sim.port, sim.unit_id      # where to connect
        sim.image.get("power")               # engineering values, also settable
        sim.writes                           # what Modbus clients wrote
        sim.model.force("door_open", True)   # the physics
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from device_profiles import load_builtin_profile
from firmware_sim.modbus_server import ModbusSimServer
from firmware_sim.register_image import RegisterImage
from firmware_sim.smart_pole import SmartPoleModel, SmartPoleViews
from firmware_sim.ticking import ticking

__all__ = ["SmartPoleSim", "run_smart_pole"]


@dataclass(frozen=True, slots=True)
class SmartPoleSim(SmartPoleViews):
    """A running smart pole simulator (``writes``, ``profile``: :class:`SmartPoleViews`)."""

    server: ModbusSimServer
    image: RegisterImage
    model: SmartPoleModel
    unit_id: int

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def endpoint(self) -> str:
        return self.server.endpoint


@asynccontextmanager
async def run_smart_pole(
    *,
    seed: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    unit_id: int = 1,
    tick_s: float | None = 1.0,
    clock: Callable[[], float] = time.time,
    utc_offset_h: float = 0.0,
) -> AsyncIterator[SmartPoleSim]:
    """Serve a simulated smart pole until the block exits.

    ``port=0`` picks a free port (see ``sim.port``); ``tick_s=None`` never ticks on its own
    (call ``sim.model.step()``), which keeps values still for tests. Writes take effect at once
    either way.
    """
    image = RegisterImage(load_builtin_profile("smart_pole"), clock=clock)
    model = SmartPoleModel(image, seed=seed, clock=clock, utc_offset_h=utc_offset_h)
    server = ModbusSimServer(image, host=host, port=port, unit_ids=(unit_id,))
    async with server, ticking(model.run, tick_s, name="smart_pole tick"):
        yield SmartPoleSim(server=server, image=image, model=model, unit_id=unit_id)
