"""Routes for provisioning (tokens, claims, bulk CSV), agents' revocation and the audit log.

The claim is the one route without an API key: a provisioning token authenticates it (in the
body or as ``Authorization: Bearer``). Refusals are ``application/problem+json`` with a
machine-readable ``reason``: ``missing``/``unknown`` (401), ``out_of_scope`` (403),
``conflict`` (409), ``expired``/``exhausted``/``revoked`` (410), ``invalid`` (422),
``rate_limited`` (429, with ``Retry-After``), ``broker_admin_failed`` (502).

Technicians act within their key's site: their tokens are scoped to it and they see and
revoke only its tokens. Admins act on every site, or on their key's site if it has one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.deps import Admin, HubDep
from cloud_hub.api.problems import TITLES, problem, problem_responses
from cloud_hub.api.schemas import UtcDateTime
from cloud_hub.api.scope import agent_in_scope, unscoped_only
from cloud_hub.provisioning import (
    DeviceSpec,
    IssuedToken,
    NotFound,
    ProvisioningError,
    ProvisioningService,
    RateLimited,
    ScopeViolation,
)
from device_profiles.wire import ID_PATTERN

__all__ = ["document_token_lifetime", "router"]

WireId = Annotated[str, Field(pattern=ID_PATTERN)]
MAX_CSV_BYTES = 2_000_000


def _service(request: Request) -> ProvisioningService:
    service: ProvisioningService = request.app.state.hub.provisioning
    return service


ServiceDep = Annotated[ProvisioningService, Depends(_service)]
Provisioner = Annotated[Principal, Depends(require("provision"))]
router = APIRouter(prefix="/api/v1", responses=problem_responses(400, 401, 403, 422))


def _problem(exc: ProvisioningError) -> JSONResponse:
    response = problem(exc.status, TITLES.get(exc.status, "Error"), exc.detail, reason=exc.reason)
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


_problems = problem_responses


def _scope(principal: Principal) -> str | None:
    """The site a principal is confined to (None: every site)."""
    if principal.role == "admin" or principal.site is not None:
        return principal.site
    if principal.site is None:
        raise HTTPException(403, f"a {principal.role} key without a site may not provision")
    return principal.site


# -- schemas ------------------------------------------------------------------------------


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str | None = Field(
        default=None, max_length=64, description="Technicians: their own site (the default)."
    )
    ttl_s: float | None = Field(default=None, gt=0, description="Lifetime; the hub's default.")
    max_uses: int = Field(default=1, ge=1, le=10_000)
    note: str = Field(default="", max_length=200)
    agent_id: WireId | None = Field(default=None, description="Only this agent may claim it.")


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    token_id: str
    site: str | None
    agent_id: str | None
    note: str
    created_by: str
    created_at: UtcDateTime
    expires_at: UtcDateTime
    max_uses: int
    uses: int
    revoked_at: UtcDateTime | None


class TokenIssued(BaseModel):
    token_id: str
    token: str = Field(description="The secret: shown this once, never again.")
    site: str | None
    agent_id: str | None
    expires_at: UtcDateTime
    max_uses: int
    devices: int = Field(description="Devices planned on the token (bulk import).")

    @classmethod
    def of(cls, issued: IssuedToken) -> TokenIssued:
        return cls(
            token_id=issued.token_id,
            token=issued.secret,
            site=issued.site,
            agent_id=issued.agent_id,
            expires_at=issued.expires_at,
            max_uses=issued.max_uses,
            devices=issued.devices,
        )


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str | None = Field(
        default=None, max_length=200, description="Or send it as Authorization: Bearer."
    )
    agent_id: WireId
    devices: list[DeviceSpec] = Field(default_factory=list, max_length=500)


class MqttCredentials(BaseModel):
    host: str
    port: int
    tls: bool
    username: str
    password: str
    client_id: str = Field(description="The agent must connect with this client id.")


class ClaimOut(BaseModel):
    agent_id: str
    site: str | None
    topic_root: str
    devices: list[str]
    mqtt: MqttCredentials


class AgentRevoked(BaseModel):
    agent_id: str
    revoked_at: UtcDateTime


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDateTime
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_before: int | None = Field(description="Pass as ?before= for the next (older) page.")


# -- tokens -------------------------------------------------------------------------------


@router.post(
    "/provisioning/tokens",
    status_code=status.HTTP_201_CREATED,
    tags=["provisioning"],
    response_model=TokenIssued,
    responses=_problems(403, 422),
)
async def create_token(
    body: TokenCreate, principal: Provisioner, service: ServiceDep
) -> TokenIssued | JSONResponse:
    """A provisioning token; its secret is in this response only."""
    scope = _scope(principal)
    if scope is not None and body.site not in (None, scope):
        raise HTTPException(403, f"your key may provision site '{scope}' only")
    try:
        issued = await service.create_token(
            principal.key_id,
            site=scope if scope is not None else body.site,
            ttl_s=body.ttl_s,
            max_uses=body.max_uses,
            note=body.note,
            agent_id=body.agent_id,
        )
    except ProvisioningError as exc:
        return _problem(exc)
    return TokenIssued.of(issued)


@router.get("/provisioning/tokens", tags=["provisioning"])
async def list_tokens(
    principal: Provisioner,
    service: ServiceDep,
    include_inactive: Annotated[bool, Query(description="Also revoked, expired, used up.")] = False,
) -> list[TokenOut]:
    rows = await service.list_tokens(_scope(principal), include_inactive=include_inactive)
    return [TokenOut.model_validate(r) for r in rows]


@router.delete(
    "/provisioning/tokens/{token_id}",
    tags=["provisioning"],
    response_model=TokenOut,
    responses=_problems(403, 404),
)
async def revoke_token(
    token_id: str, principal: Provisioner, service: ServiceDep
) -> TokenOut | JSONResponse:
    """Revoke a token (idempotent); claims with it are refused from now on. Another site's
    token is not found, as a missing one."""
    try:
        row = await service.revoke_token(principal.key_id, token_id, _scope(principal))
    except ScopeViolation:
        return _problem(NotFound(f"no provisioning token '{token_id}'"))
    except ProvisioningError as exc:
        return _problem(exc)
    return TokenOut.model_validate(row)


@router.post(
    "/provisioning/bulk",
    status_code=status.HTTP_201_CREATED,
    tags=["provisioning"],
    response_model=list[TokenIssued],
    responses=_problems(403, 409, 413, 422),
    openapi_extra={
        "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}
    },
)
async def bulk_provision(
    request: Request,
    principal: Provisioner,
    service: ServiceDep,
    ttl_s: Annotated[float | None, Query(gt=0)] = None,
) -> list[TokenIssued] | JSONResponse:
    """Upload a CSV (``Content-Type: text/csv``, one row per device; columns ``agent_id,
    device_id, profile`` and optionally ``site, pole, mount_position, lat, lon, tags``):
    one single-use token per agent, bound to it and carrying its devices."""
    scope = _scope(principal)
    raw = await request.body()
    if len(raw) > MAX_CSV_BYTES:
        return problem(413, "Content Too Large", f"at most {MAX_CSV_BYTES} bytes of CSV")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return problem(422, "Invalid request", "the CSV must be UTF-8", reason="invalid")
    try:
        issued = await service.bulk_tokens_from_csv(
            principal.key_id, text, site_scope=scope, ttl_s=ttl_s
        )
    except ProvisioningError as exc:
        return _problem(exc)
    return [TokenIssued.of(i) for i in issued]


# -- claims -------------------------------------------------------------------------------


@router.post(
    "/provisioning/claim",
    status_code=status.HTTP_201_CREATED,
    tags=["provisioning"],
    response_model=ClaimOut,
    responses=_problems(401, 403, 409, 410, 422, 429, 502),
)
async def claim(
    request: Request, body: Annotated[ClaimRequest, Body()], service: ServiceDep
) -> ClaimOut | JSONResponse:
    """An agent exchanges a provisioning token for its broker credentials (no API key)."""
    token = body.token
    authorization = request.headers.get("authorization", "")
    if token is None and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    # the real client: uvicorn takes it from X-Forwarded-For only when a proxy of
    # api.trusted_proxies connects (none by default)
    client = request.client.host if request.client is not None else "unknown"
    try:
        result = await service.claim(token, body.agent_id, body.devices, client)
    except ProvisioningError as exc:
        return _problem(exc)
    # the hub's ingest learns the new devices now, not only when their agent reports
    await request.app.state.hub.ingest.load_devices()
    return ClaimOut(
        agent_id=result.agent_id,
        site=result.site,
        topic_root=result.topic_root,
        devices=result.devices,
        mqtt=MqttCredentials(
            host=result.mqtt.host,
            port=result.mqtt.port,
            tls=result.mqtt.tls,
            username=result.username,
            password=result.password,
            client_id=result.client_id,
        ),
    )


@router.post(
    "/agents/{agent_id}/revoke",
    tags=["provisioning"],
    response_model=AgentRevoked,
    responses=_problems(404, 502),
)
async def revoke_agent(
    agent_id: str, principal: Admin, service: ServiceDep, hub: HubDep
) -> AgentRevoked | JSONResponse:
    """Disable the agent's broker credentials and disconnect it (idempotent); the hub then
    records it offline (a `status` event, the `agent_offline` alarm) and ignores the
    broker's retained copy of its last birth message."""
    await agent_in_scope(hub, principal, agent_id)
    try:
        cred = await hub.revoke_agent(principal.key_id, agent_id)
    except ProvisioningError as exc:
        return _problem(exc)
    assert cred.revoked_at is not None
    return AgentRevoked(agent_id=agent_id, revoked_at=cred.revoked_at)


# -- audit --------------------------------------------------------------------------------


@router.get("/audit", tags=["audit"])
async def audit_log(
    _: Admin,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before: Annotated[
        int | None, Query(ge=1, lt=2**63, description="Entries older than this id.")
    ] = None,
    action: str | None = None,
    target: str | None = None,
) -> AuditPage:
    """Who changed what and when, newest first (the whole hub's: not for site-scoped keys)."""
    unscoped_only(_, "the audit log")
    rows = await service.audit_log(limit=limit, before=before, action=action, target=target)
    items = [AuditOut.model_validate(r) for r in rows]
    return AuditPage(items=items, next_before=items[-1].id if len(items) == limit else None)


def document_token_lifetime(app: FastAPI, max_ttl_s: float) -> None:
    """Say this hub's longest token lifetime (``provisioning.max_token_ttl_s``, a setting) as
    the maximum of ``ttl_s`` in the OpenAPI, where the route declarations cannot."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # built once and cached: this edit is idempotent
        body = schema["components"]["schemas"]["TokenCreate"]["properties"]["ttl_s"]
        bulk = schema["paths"]["/api/v1/provisioning/bulk"]["post"]["parameters"]
        query = next(p["schema"] for p in bulk if p["name"] == "ttl_s")
        for ttl in (body, query):
            for option in ttl.get("anyOf", [ttl]):
                if option.get("type") == "number":
                    option["maximum"] = max_ttl_s
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension
