"""Cluster: several hub processes acting as one hub.

Parts: ``lease`` (the leader lease in the registry, or a sole lease without a group),
``models`` (its table), ``leadership`` (:class:`Leadership`, the public entry: runs the leader
duties - alarms, webhook relay, command sweep, lighting - in exactly one process and hands
them over when it dies). The composition root (:mod:`cloud_hub.hub`) wires it.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
