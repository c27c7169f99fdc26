"""Whether a TCP port can be listened on, checked before a process starts anything else.

The demo starts a broker, a simulator, an agent and the hub before the hub's HTTP server
binds its port; a port already taken must stop it at once, in one line, not in the middle
of start-up (where uvicorn exits the process and every other task dies with a traceback).
"""

from __future__ import annotations

import errno
import socket

__all__ = ["PortTaken", "ensure_port_free"]


class PortTaken(Exception):
    """``host:port`` is already in use (or cannot be bound: ``reason`` says why)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"port {port} on {host} cannot be used: {reason}")


def ensure_port_free(host: str, port: int) -> None:
    """PortTaken unless every address of ``host`` can listen on ``port`` now (as uvicorn
    will: with SO_REUSEADDR, so a port in TIME_WAIT counts as free)."""
    if port == 0:
        return  # any free port
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortTaken(host, port, f"cannot resolve {host!r}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise PortTaken(host, port, reason or str(exc)) from None
