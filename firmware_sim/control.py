"""Run-time control of running simulators: one handle per sim, and a JSON-lines endpoint.

Each running simulator of a site is a :class:`RunningSim` (started by the ``start_*`` context
managers): its name, kind and address, :meth:`~RunningSim.inject` mapping a fault name onto
that simulator's own fault API, :meth:`~RunningSim.clear` and :meth:`~RunningSim.status`.

=================================  ================================================================
kind                               faults (options)
=================================  ================================================================
smart_pole_tcp, smart_pole_rtu,    ``no_reply delay exception corrupt_frame truncated garbage
gateway_bus                        disconnect restart`` (count, unit_id, delay_s, code)
manhole_cover                      ``drop unavailable malformed delay`` (count, delay_s)
nbiot_modem                        ``no_answer late_answer error garbage`` (command, count, code =
                                   CME code), ``unplug``, ``reboot`` (an action, done at once)
pollution_analyser                 ``bad_crc bad_length garbage split no_answer`` (count)
=================================  ================================================================

One rule for every simulator: a fault lasts until cleared (``clear``), unless ``count`` N
(>= 1) is given, when it hits the next N requests (frames, commands, answers) and ends.

The Modbus sims (pole and gateway bus) also take ``set`` and ``release``: a point pinned to a
value (``door_open=true``, ``pm25=180``, ``state=fault`` by its enum label; parsed and checked by
the device's profile in :mod:`firmware_sim.point_values`) is served until released, so that a
technician or a test triggers an alarm without code (``firmware-sim set pole-1 door_open=true``).

The endpoint (:class:`ControlServer`) listens on a UNIX socket path or on a TCP port of
127.0.0.1; a client sends one JSON line and reads one JSON line back (:func:`request`)::

    {"op": "fault", "sim": "pole-1", "fault": "no_reply", "count": 1}
    {"ok": true, "result": "no_reply on pole-1: next 1 request(s)"}
    {"op": "fault", "sim": "pole-1", "fault": "no_reply"}
    {"ok": true, "result": "no_reply on pole-1: every request until cleared"}
    {"op": "status"}   {"op": "clear", "sim": "pole-1"}
    {"op": "set", "sim": "gw-1", "device": "gw-1-barrier_gate", "points": ["state=fault"]}
    {"op": "release", "sim": "gw-1", "device": "gw-1-barrier_gate", "points": []}

The pieces: :mod:`firmware_sim.sim_handles` (:class:`RunningSim` and its kinds, the faults),
:mod:`firmware_sim.sim_starters` (the ``start_*`` context managers),
:mod:`firmware_sim.control_endpoint` (:class:`ControlServer`, :func:`request`); this module
gathers their public names.

Errors: :class:`ControlError` (unknown sim or fault, an option that does not apply, the
endpoint unreachable).
"""

from firmware_sim.control_endpoint import DEFAULT_CONTROL, ControlServer, Handler, request
from firmware_sim.sim_handles import (
    AnalyserSim,
    CoapSim,
    ControlError,
    FaultRequest,
    ModbusSim,
    ModemSim,
    RunningSim,
)
from firmware_sim.sim_starters import (
    start_gateway_bus,
    start_manhole_cover,
    start_nbiot_modem,
    start_pollution_analyser,
    start_smart_pole_rtu,
    start_smart_pole_tcp,
)

__all__ = [
    "DEFAULT_CONTROL",
    "AnalyserSim",
    "CoapSim",
    "ControlError",
    "ControlServer",
    "FaultRequest",
    "Handler",
    "ModbusSim",
    "ModemSim",
    "RunningSim",
    "request",
    "start_gateway_bus",
    "start_manhole_cover",
    "start_nbiot_modem",
    "start_pollution_analyser",
    "start_smart_pole_rtu",
    "start_smart_pole_tcp",
]
