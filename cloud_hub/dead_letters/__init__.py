"""Dead letters: refused messages and readings, kept with their reason.

Parts: ``store`` (:class:`DeadLetterStore`, the public entry: queues and writes dead letters,
bounded and counted), ``models`` (their table and API shapes), ``replay`` (a dead letter sent
through ingest again once its cause is fixed). Ingest writes them; the API lists and replays
them.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
