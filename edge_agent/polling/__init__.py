"""Polling: reading the devices behind the agent.

Parts: ``devices`` (a device at run time: its config, profile and driver), ``poller``
(:class:`DevicePoller`, the public entry: polls one device on its intervals, with backoff),
``reporting`` (report by exception: deadbands and silence), ``probe`` (``edge-agent check``:
every point of every device read once). The agent runs one poller per device; their readings
go to the outbox.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
