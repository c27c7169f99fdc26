"""API keys: creating them (``cloud-hub create-admin-key``, the admin API) and hashing them.

Keys are random (256 bits), shown once, stored as SHA-256 hashes: a key is a high-entropy
secret, not a password, so a fast hash is the right tool (and lookups are by hash).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

from cloud_hub.registry import ApiKeyRow, Registry, utcnow

__all__ = ["Role", "create_api_key", "hash_key", "new_api_key"]

Role = Literal["admin", "operator", "technician", "integration", "viewer"]


def new_api_key() -> tuple[str, str, str]:
    """A fresh key: (key id, the secret to show once, its hash to store)."""
    key_id = secrets.token_hex(8)
    secret = f"cp_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, secret, hash_key(secret)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_api_key(
    registry: Registry, name: str, role: Role, site: str | None = None
) -> tuple[ApiKeyRow, str]:
    """Store a new key; returns its row and the secret, which is shown once and never stored."""
    key_id, secret, key_hash = new_api_key()
    row = ApiKeyRow(
        key_id=key_id, key_hash=key_hash, name=name, role=role, site=site, created_at=utcnow()
    )
    await registry.add_api_key(row)
    return row, secret
