"""Ingest: agents' MQTT messages into registry updates and stored telemetry.

Parts: ``messages`` (:class:`Ingest`, the public entry: validates contract messages and each
reading against its device's profile, applies the registry effects, dead-letters what does not
fit), ``agent_limits`` (what one agent may send, checked before a message is queued),
``writer`` (the telemetry writer: batches readings into the store, then acknowledges them),
``spool`` (the disk spool while the store is down), ``settings`` (the spool's settings) and
``stored_acks`` (tells agents which of their batches are stored). The hub's two MQTT sessions
(:mod:`cloud_hub.hub`) call it.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
