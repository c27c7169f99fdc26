"""NB-IoT: the agent's uplink through an AT modem and CoAP, between sleeps.

Parts: ``uplink`` (:class:`NbIotUplink`, the public entry: wakes, sends the outbox in CoAP
requests, takes the hub's acknowledgements and commands, sleeps), ``coap`` (CoAP messages over
the modem's UDP sockets), ``settings`` (its settings). The agent runs it instead of the MQTT
uplink when configured.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
