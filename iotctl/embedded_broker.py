"""An in-process MQTT broker (amqtt, MQTT 3.1.1) for the demo: no server to install.

Good for a demo or a single cabinet on a bench (~3k msg/s); use Mosquitto or EMQX in service.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import AsyncIterator

__all__ = ["embedded_broker"]


@contextlib.asynccontextmanager
async def embedded_broker(host: str, port: int) -> AsyncIterator[str]:
    """Run an amqtt broker on ``host:port``; yields its address."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # amqtt imports deprecated APIs
        from amqtt.broker import Broker  # noqa: PLC0415 - optional, heavy, demo only

    logging.getLogger("amqtt").setLevel(logging.WARNING)
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    try:
        yield f"{host}:{port}"
    finally:
        await broker.shutdown()
