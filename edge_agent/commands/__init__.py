"""Commands: the hub's commands, executed safely at the edge.

Parts: ``executor`` (:class:`CommandExecutor`, the public entry: checks a command against the
profile again, writes it, reads back and verifies, reports the result), ``journal`` (which
command ids ran, on disk, so that one runs at most once across restarts). The uplinks hand it
commands.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
