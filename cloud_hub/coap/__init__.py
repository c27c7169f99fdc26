"""CoAP: NB-IoT agents' uplinks, and the presence of agents that hold no connection.

Parts: ``ingress`` (:class:`CoapIngress`, the public entry: the aiocoap server that takes
authenticated uplinks and answers with acknowledgements and pending commands), ``models``
(per-agent CoAP secrets), ``settings`` (its settings), ``presence`` (offline detection for
agents that report and sleep). The hub runs it beside its MQTT sessions.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
