"""MQTT session settings of the contract.

Agents connect with a fixed client id and a persistent session (MQTT 3.1.1: clean session off;
MQTT 5: clean start off and a session expiry), so QoS 1 commands published while an agent is
offline are queued by the broker and delivered when it returns. The keepalive bounds how long a
silently dead link goes unnoticed: at most 1.5 x KEEPALIVE_S on either side.
"""

from __future__ import annotations

__all__ = ["KEEPALIVE_S", "SESSION_EXPIRY_S", "agent_client_id"]

KEEPALIVE_S = 30
SESSION_EXPIRY_S = 7 * 24 * 3600


def agent_client_id(agent_id: str) -> str:
    """The MQTT client id of an agent (stable, so its persistent session survives restarts)."""
    return f"agent-{agent_id}"
