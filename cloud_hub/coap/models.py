"""CoAP credentials of NB-IoT agents: the ``coap_credentials`` table and its helpers.

An NB-IoT agent authenticates each uplink with an HMAC-SHA256 (see
:mod:`cloud_hub.coap.ingress`). HMAC verification needs the key itself, so unlike API keys and
provisioning tokens it cannot be stored as a one-way hash. What is stored is the *derived* key
``HMAC-SHA256(secret, "citypulse coap key v1")``: it is enough to check (and, admittedly, to
forge) that agent's CoAP uplinks, so the table is as sensitive as the agent's credential and
revocation is immediate; but a dump never reveals the secret itself, which an installer may
have reused elsewhere. The secret is random (32 bytes, URL-safe base64), shown once, at
provisioning.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.provisioning.models import AuditRow
from cloud_hub.registry import Registry
from cloud_hub.registry.models import Base

__all__ = [
    "CoapCredentialRow",
    "coap_key",
    "derive_coap_key",
    "provision_coap_secret",
    "revoke_coap_secret",
]

_KEY_LABEL = b"citypulse coap key v1"
SECRET_BYTES = 32


class CoapCredentialRow(Base):
    """An agent's current CoAP key (derived from its secret; the secret is never stored)."""

    __tablename__ = "coap_credentials"

    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_hex: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def derive_coap_key(secret: str) -> bytes:
    """The HMAC key of a CoAP secret (the agent derives the same)."""
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


async def provision_coap_secret(
    registry: Registry, agent_id: str, secret: str | None = None, *, actor: str = "system"
) -> str:
    """Give ``agent_id`` a CoAP secret (a new random one unless given), replacing any
    previous one; returns the secret, to be put into the agent's ``uplink.secret``."""
    if secret is None:
        secret = secrets.token_urlsafe(SECRET_BYTES)
    if len(secret) < 16:
        raise ValueError("a CoAP secret has at least 16 characters")
    now = datetime.now(UTC)
    async with registry.session.begin() as db:
        row = await db.get(CoapCredentialRow, agent_id)
        if row is None:
            row = CoapCredentialRow(agent_id=agent_id, created_at=now)
            db.add(row)
        row.key_hex = derive_coap_key(secret).hex()
        row.created_at = now
        row.revoked_at = None
        db.add(
            AuditRow(
                at=now, actor=actor, action="coap.provision", target=f"agent:{agent_id}", detail={}
            )
        )
    return secret


async def revoke_coap_secret(registry: Registry, agent_id: str, *, actor: str = "system") -> bool:
    """Refuse ``agent_id``'s CoAP uplinks from now on; False if it had no live secret."""
    now = datetime.now(UTC)
    async with registry.session.begin() as db:
        row = await db.get(CoapCredentialRow, agent_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = now
        db.add(
            AuditRow(
                at=now, actor=actor, action="coap.revoke", target=f"agent:{agent_id}", detail={}
            )
        )
        return True


async def coap_key(registry: Registry, agent_id: str) -> bytes | None:
    """The live CoAP key of ``agent_id``, or None (unknown or revoked)."""
    async with registry.session() as db:
        row = await db.get(CoapCredentialRow, agent_id)
    if row is None or row.revoked_at is not None:
        return None
    return bytes.fromhex(row.key_hex)
