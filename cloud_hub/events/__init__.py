"""Events: what happened in the hub, live and durable, and who is told.

Parts: ``bus`` (:class:`EventBus`, the public entry: in-process publish/subscribe of
:class:`HubEvent`, also the source of the API's event stream), ``log`` and ``log_models`` (the
durable event log of status, alarm and command events, shared by hub processes), ``webhooks``
and ``webhook_models`` (webhook subscriptions and their signed deliveries), ``relay`` (the
leader's relay from the event log to the webhooks). Ingest, alarms, lighting and commands
publish; the API and the webhooks read.

Import a name from the module that defines it: this file holds only the map above.
"""

__all__: list[str] = []
