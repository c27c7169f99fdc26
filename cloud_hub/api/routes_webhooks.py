"""Routes under /api/v1/webhooks (admin only): create, list and delete webhooks.

The signing secret is returned once, by create. A webhook with a ``site`` gets only the events
of that site; one created with a site-scoped key always has the key's site, and such a key
sees and deletes only its site's webhooks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from cloud_hub.api.audit import audit
from cloud_hub.api.auth import require
from cloud_hub.api.deps import Admin
from cloud_hub.api.schemas import UtcDateTime
from cloud_hub.api.scope import confined_site, not_found, sees
from cloud_hub.events.bus import EventKind
from cloud_hub.events.webhook_models import WebhookRow
from cloud_hub.events.webhooks import WebhookDispatcher

__all__ = ["WebhookCreate", "WebhookCreated", "WebhookOut", "router"]


def _dispatcher(request: Request) -> WebhookDispatcher:
    dispatcher: WebhookDispatcher = request.app.state.hub.webhooks
    return dispatcher


WebhooksDep = Annotated[WebhookDispatcher, Depends(_dispatcher)]
router = APIRouter(
    prefix="/api/v1/webhooks", tags=["webhooks"], dependencies=[Depends(require("admin"))]
)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"url": "https://ops.example.org/hooks/iot", "kinds": ["alarm"]}]
        },
    )

    url: AnyHttpUrl = Field(description="Where events are POSTed (http or https).")
    kinds: list[EventKind] = Field(
        default_factory=list, description="Event kinds to deliver; empty: all."
    )
    site: str | None = Field(
        default=None,
        max_length=64,
        description="Deliver only this site's events; none: every site's (a site-scoped "
        "key: its own site, always).",
    )


class WebhookOut(BaseModel):
    webhook_id: str
    url: str
    kinds: list[str]
    site: str | None = Field(description="Only this site's events are delivered; null: all.")
    created_at: UtcDateTime
    active: bool
    delivered: int = Field(description="Deliveries since this hub process started.")
    retries: int = Field(description="Retried attempts since this hub process started.")
    dropped: int = Field(description="Events dropped because the webhook's queue was full.")
    failed_deliveries: int = Field(description="Deliveries given up on, ever.")
    last_error: str | None
    last_failure_at: UtcDateTime | None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="HMAC-SHA256 key of X-Hub-Signature-256. Shown only now: keep it."
    )


def _out(row: WebhookRow, dispatcher: WebhookDispatcher) -> WebhookOut:
    counts = dispatcher.counters(row.webhook_id)
    return WebhookOut(
        webhook_id=row.webhook_id,
        url=row.url,
        kinds=list(row.kinds),
        site=row.site,
        created_at=row.created_at,
        active=row.active,
        delivered=counts["delivered"],
        retries=counts["retries"],
        dropped=counts["dropped"],
        failed_deliveries=row.failed_deliveries,
        last_error=row.last_error,
        last_failure_at=row.last_failure_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_webhook(
    body: WebhookCreate, dispatcher: WebhooksDep, caller: Admin, request: Request
) -> WebhookCreated:
    """Start delivering events to a URL. The response holds the signing secret, once."""
    row = await dispatcher.create(str(body.url), body.kinds, confined_site(caller, body.site))
    await audit(request, "webhook.create", f"webhook:{row.webhook_id}", url=str(body.url))
    return WebhookCreated(**_out(row, dispatcher).model_dump(), secret=row.secret)


@router.get("")
async def list_webhooks(dispatcher: WebhooksDep, caller: Admin) -> list[WebhookOut]:
    rows = await dispatcher.webhooks()
    return [_out(row, dispatcher) for row in rows if sees(caller.site, (row.site,))]


@router.delete("/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(
    webhook_id: str, dispatcher: WebhooksDep, caller: Admin, request: Request
) -> Response:
    if caller.site is not None:
        rows = {row.webhook_id: row for row in await dispatcher.webhooks()}
        if webhook_id not in rows or not sees(caller.site, (rows[webhook_id].site,)):
            raise not_found(f"no webhook '{webhook_id}'")
    if not await dispatcher.remove(webhook_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook '{webhook_id}'")
    await audit(request, "webhook.delete", f"webhook:{webhook_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
