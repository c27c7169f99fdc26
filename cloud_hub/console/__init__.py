"""Console: the operators' web pages, served by the hub at ``/`` beside the API.

Parts: ``models`` (people's accounts and their sessions), ``accounts`` (passwords hashed with
argon2, sign-in with its rate limit, sessions, CSRF tokens, password change), ``auth`` (the
pages' dependency: the signed-in person as a
:class:`~cloud_hub.api.auth.Principal`, and the CSRF check of every form), ``texts`` (the
pages' words in Simplified Chinese and English), ``overview`` (the overview's figures),
``pages`` (the routes and their Jinja2 templates, the public entry: :data:`router`). Pages call
the same services as the API; every action is audit-logged as the person.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
