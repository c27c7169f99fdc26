"""Device simulators built from the device profiles, speaking the real protocols.

- smart pole over Modbus TCP (:func:`run_smart_pole`) and Modbus RTU on a pseudo-terminal
  (:func:`run_smart_pole_rtu`);
- a community gateway RS-485 bus with several unit ids (:func:`run_gateway_bus`);
- a manhole-cover CoAP sensor with observable resources (:func:`run_manhole_sensor`);
- a pollution analyser speaking HJ 212-2017 on a pseudo-terminal or over TCP
  (:func:`run_pollution_analyser`);
- an NB-IoT modem answering AT commands on a pseudo-terminal and sending real UDP
  (:func:`run_nbiot_modem`).

Modbus simulators are a :class:`RegisterImage` (the registers, in engineering values for the
physics and in registers for clients), a physics model and a server; every simulator can inject
faults at run time (``sim.faults``) and logs what it sent and what was written to it.
"""

from firmware_sim.coap_sensor import ManholeSensorSim, run_manhole_sensor
from firmware_sim.faults import Fault, FaultInjector, TrafficLog, TrafficRecord
from firmware_sim.gateway import DEFAULT_UNITS, GatewayBusSim, run_gateway_bus
from firmware_sim.modbus_rtu_server import ModbusRtuSimServer, SmartPoleRtuSim, run_smart_pole_rtu
from firmware_sim.modbus_server import ModbusSimServer
from firmware_sim.nbiot_modem import NbIotModemSim, run_nbiot_modem
from firmware_sim.pollution_analyser import PollutionAnalyser, run_pollution_analyser
from firmware_sim.register_image import RegisterImage, WriteListener, WriteRecord
from firmware_sim.runner import SmartPoleSim, run_smart_pole
from firmware_sim.serial_link import PtyLink
from firmware_sim.smart_pole import SmartPoleModel

__all__ = [
    "DEFAULT_UNITS",
    "Fault",
    "FaultInjector",
    "GatewayBusSim",
    "ManholeSensorSim",
    "ModbusRtuSimServer",
    "ModbusSimServer",
    "NbIotModemSim",
    "PollutionAnalyser",
    "PtyLink",
    "RegisterImage",
    "SmartPoleModel",
    "SmartPoleRtuSim",
    "SmartPoleSim",
    "TrafficLog",
    "TrafficRecord",
    "WriteListener",
    "WriteRecord",
    "run_gateway_bus",
    "run_manhole_sensor",
    "run_nbiot_modem",
    "run_pollution_analyser",
    "run_smart_pole",
    "run_smart_pole_rtu",
]
