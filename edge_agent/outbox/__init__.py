"""Outbox: what waits to go up, kept on disk until the hub has it.

Parts: ``memory`` (:class:`~edge_agent.outbox.memory.Outgoing`, the
:class:`~edge_agent.outbox.memory.OutboxLike` interface and an in-memory outbox), ``spool``
(:class:`DiskOutbox`, the public entry: the SQLite spool the agent uses - store-and-forward
across restarts and SIGKILL, stored acknowledgements, rewind), ``file`` (its SQLite file and
bookkeeping), ``batches`` (what it hands out next), ``waking`` (the outbox that ends an NB-IoT
sleep early). Pollers and the command executor put into it; the uplinks take from it.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
