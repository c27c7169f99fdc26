"""The audit log of API mutations: who (the API key), what, when — next to provisioning's."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from cloud_hub.provisioning.models import AuditRow
from cloud_hub.registry import utcnow

__all__ = ["audit"]


async def audit(request: Request, action: str, target: str, **detail: Any) -> None:
    """Record a mutation made through the API by the request's caller."""
    principal = getattr(request.state, "principal", None)
    actor = principal.key_id if principal is not None else "anonymous"
    async with request.app.state.hub.registry.session.begin() as db:
        db.add(AuditRow(at=utcnow(), actor=actor, action=action, target=target, detail=detail))
