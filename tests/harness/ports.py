"""Free TCP port allocation for test servers.

Ports are chosen *below* the kernel's ephemeral range (``ip_local_port_range``).
Ports handed out by ``bind(port=0)`` come from the ephemeral range, which is also
where the kernel picks the local port of every outgoing connection. A test that
stops a broker for a few seconds and restarts it on the same port could then find
the port taken by some unrelated outgoing connection (``EADDRINUSE``). Outside the
ephemeral range that cannot happen; only another listener can collide, which the
servers handle by retrying start on a new port (first start only).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path

LOCALHOST = "127.0.0.1"

_LOW = 20000
_lock = threading.Lock()
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True if a listener could bind ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option servers use, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _bind_zero(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that is free now and not handed out before
    by this process. Parallel processes (pytest-xdist) may still race for it; the
    servers retry their first start on a new port when that happens."""
    high = _ephemeral_low()
    rng = random.SystemRandom()
    with _lock:
        if high - _LOW > 1000:
            for _ in range(200):
                port = rng.randrange(_LOW, high)
                if port not in _handed_out and port_is_free(port, host):
                    _handed_out.add(port)
                    return port
        # Odd port range configuration: fall back to the kernel's choice.
        for _ in range(50):
            port = _bind_zero(host)
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"could not find a free TCP port on {host}")


def can_connect(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_port_closed(host: str, port: int, timeout: float = 10.0) -> bool:
    """Poll until nothing accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not can_connect(host, port, timeout=0.2):
            return True
        time.sleep(0.05)
    return False
