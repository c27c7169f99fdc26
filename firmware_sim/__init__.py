"""Device simulators built from the device profiles, speaking the real protocols.

A simulator is a :class:`RegisterImage` (the device's registers, in engineering values for the
simulator and in registers for Modbus clients), a physics model that drives it, and a
:class:`ModbusSimServer` that serves it. :func:`run_smart_pole` wires the three together.
"""

from firmware_sim.modbus_server import ModbusSimServer
from firmware_sim.register_image import RegisterImage, WriteListener, WriteRecord
from firmware_sim.runner import SmartPoleSim, run_smart_pole
from firmware_sim.smart_pole import SmartPoleModel

__all__ = [
    "ModbusSimServer",
    "RegisterImage",
    "SmartPoleModel",
    "SmartPoleSim",
    "WriteListener",
    "WriteRecord",
    "run_smart_pole",
]
