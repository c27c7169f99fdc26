"""The hub's HTTP API (FastAPI): ``app`` (:func:`~cloud_hub.api.app.create_app`, the public
entry, which also serves the console of :mod:`cloud_hub.console`), ``auth`` and ``keys`` (API
keys and roles), ``scope`` (site scope at object level), ``routes*`` (one module a subject),
``event_stream``, ``problems``, ``limits``, ``audit``, ``docs_pages``.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
