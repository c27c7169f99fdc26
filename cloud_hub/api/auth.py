"""API keys with roles: who may do what.

Keys (see :mod:`cloud_hub.api.keys`) are shown once and stored hashed. A request carries its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    role          may
    viewer        read devices, telemetry, commands, alarms
    integration   viewer + send commands + event stream (other systems)
    operator      integration + acknowledge alarms + group commands
    technician    operator + provisioning tokens and device commissioning for their site
    admin         everything, including API keys, agents' revocation and webhooks

A key of any role may have a ``site``: it then sees and acts on that site's objects only
(:mod:`cloud_hub.api.scope`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cloud_hub.api.keys import Role, hash_key, new_api_key

__all__ = ["PERMISSIONS", "Permission", "Principal", "Role", "hash_key", "new_api_key", "require"]

Permission = Literal["read", "command", "events", "alarm:ack", "provision", "admin"]

PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "integration": frozenset({"read", "command", "events"}),
    "operator": frozenset({"read", "command", "events", "alarm:ack"}),
    "technician": frozenset({"read", "command", "events", "alarm:ack", "provision"}),
    "admin": frozenset({"read", "command", "events", "alarm:ack", "provision", "admin"}),
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key's id, name, role and site scope (None: every site)."""

    key_id: str
    name: str
    role: Role
    site: str | None = None

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]


_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def require(permission: Permission) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's Principal if its key may ``permission``; else 401 or 403."""

    async def dependency(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        header_key: Annotated[str | None, Security(_header)],
    ) -> Principal:
        secret = bearer.credentials if bearer is not None else header_key
        if not secret:
            raise HTTPException(
                401, "an API key is required", headers={"WWW-Authenticate": "Bearer"}
            )
        row = await request.app.state.hub.registry.api_key_by_hash(hash_key(secret))
        if row is None:
            raise HTTPException(
                401, "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"}
            )
        principal = Principal(key_id=row.key_id, name=row.name, role=row.role, site=row.site)
        if not principal.may(permission):
            raise HTTPException(403, f"role '{principal.role}' may not {permission}")
        request.state.principal = principal
        return principal

    return dependency
