"""Provisioning: tokens → claims → per-agent broker credentials; revocation; bulk CSV; audit.

A claim is one database transaction: the token is checked and one use consumed atomically
(``UPDATE … WHERE uses < max_uses``, safe under concurrent claims), the agent and its devices
are registered, the broker user is created (inside the transaction, so a broker failure
rolls everything back; a failed commit deletes the broker user again), and the audit entry is
written. Every mutation writes an :class:`AuditRow` (who, what, when) in the same transaction.

Bulk CSV (``bulk_tokens_from_csv``): one row per device, a header row first. Columns:

    agent_id        required  the agent (edge box) the device sits behind
    device_id       required  the field device
    profile         required  a built-in profile name (e.g. smart_pole)
    site            optional  defaults to the technician's site; one site per agent
    pole            optional
    mount_position  optional
    lat, lon        optional  decimal degrees
    tags            optional  ``key=value;key=value``

Each agent in the file gets one single-use token bound to its agent id and carrying its
devices (a "claim code" to hand to the field crew). Nothing enters the registry until the
agent claims: no phantom devices. The whole file is refused if any row is wrong, with every
problem listed as ``line N, column: reason``.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, cast

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud_hub.provisioning.broker import (
    BrokerAdmin,
    BrokerAdminSettings,
    NoBrokerAdminSettings,
    open_broker_admin,
)
from cloud_hub.provisioning.models import AgentCredentialRow, AuditRow, ProvisioningTokenRow
from cloud_hub.provisioning.tokens import (
    ClaimLimiter,
    InvalidRequest,
    NotFound,
    ProvisioningConflict,
    ScopeViolation,
    TokenRefused,
    TokenState,
    check_usable,
    hash_token,
    hashes_match,
    new_token,
)
from cloud_hub.registry import AgentRow, DeviceRow, Registry, utcnow
from device_profiles import builtin_profile_names
from device_profiles.wire import ID_PATTERN, ROOT, agent_client_id
from iot_runtime.mqtt import MqttSettings

__all__ = [
    "CSV_COLUMNS",
    "ClaimResult",
    "DeviceSpec",
    "IssuedToken",
    "ProvisioningService",
    "ProvisioningSettings",
    "PublicMqtt",
    "parse_bulk_csv",
]

log = structlog.get_logger(__name__)

WireId = Annotated[str, Field(pattern=ID_PATTERN)]
Label = Annotated[str, Field(min_length=1, max_length=64)]
CSV_COLUMNS = (
    "agent_id", "device_id", "profile", "site", "pole", "mount_position", "lat", "lon", "tags",
)  # fmt: skip
_REQUIRED_COLUMNS = ("agent_id", "device_id", "profile")
#: Device metadata copied onto registry devices where the registry has the column (all of
#: them are kept in the audit entry of the claim either way).
_METADATA = ("site", "pole", "mount_position", "lat", "lon", "tags")
MAX_DEVICES_PER_AGENT = 500
_ID = re.compile(ID_PATTERN)


class PublicMqtt(BaseModel):
    """The broker address agents are told to use (the hub may reach it differently)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False


class ProvisioningSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker_admin: BrokerAdminSettings = Field(default_factory=NoBrokerAdminSettings)
    public_mqtt: PublicMqtt | None = Field(
        default=None, description="What agents connect to; the hub's own mqtt host/port if unset."
    )
    token_ttl_s: float = Field(default=7 * 86400, gt=0, description="Default token lifetime.")
    max_token_ttl_s: float = Field(default=90 * 86400, gt=0)
    failed_claims_per_minute: float = Field(default=10, gt=0)
    failed_claims_burst: int = Field(default=10, ge=1)
    bulk_max_rows: int = Field(default=5000, ge=1)


class DeviceSpec(BaseModel):
    """A device an agent brings along when it claims (or a bulk CSV row plans)."""

    model_config = ConfigDict(extra="forbid")

    device_id: WireId
    profile: str = Field(
        description="A built-in profile name.",
        json_schema_extra={"enum": [*sorted(builtin_profile_names())]},
    )
    site: Label | None = None
    pole: Label | None = None
    mount_position: Label | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    tags: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("profile")
    @classmethod
    def _builtin_profile(cls, name: str) -> str:
        if name not in builtin_profile_names():
            raise ValueError(f"no built-in profile {name!r}")
        return name


@dataclass(frozen=True)
class IssuedToken:
    """A new token; ``secret`` exists only here, never in the database."""

    token_id: str
    secret: str
    site: str | None
    agent_id: str | None
    expires_at: datetime
    max_uses: int
    devices: int


@dataclass(frozen=True)
class ClaimResult:
    agent_id: str
    site: str | None
    mqtt: PublicMqtt
    username: str
    password: str
    client_id: str
    topic_root: str
    devices: list[str]


def _state(row: ProvisioningTokenRow) -> TokenState:
    return TokenState(row.expires_at, row.max_uses, row.uses, row.revoked_at)


_DEVICE_COLUMNS = frozenset(DeviceRow.__table__.columns.keys())


class ProvisioningService:
    def __init__(
        self,
        registry: Registry,
        broker: BrokerAdmin,
        settings: ProvisioningSettings,
        public_mqtt: PublicMqtt,
        *,
        limiter: ClaimLimiter | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.registry = registry
        self.broker = broker
        self.settings = settings
        self.public_mqtt = public_mqtt
        self.limiter = limiter or ClaimLimiter(
            settings.failed_claims_per_minute, settings.failed_claims_burst
        )
        self._now = now

    @classmethod
    def from_settings(
        cls, registry: Registry, settings: ProvisioningSettings, hub_mqtt: MqttSettings
    ) -> ProvisioningService:
        """The service for the hub: the broker admin reaches the broker where the hub does."""
        public = settings.public_mqtt or PublicMqtt(
            host=hub_mqtt.host, port=hub_mqtt.port, tls=hub_mqtt.tls is not None
        )
        return cls(registry, open_broker_admin(settings.broker_admin, hub_mqtt), settings, public)

    def _audit(self, db: AsyncSession, actor: str, action: str, target: str, **detail: Any) -> None:
        db.add(AuditRow(at=self._now(), actor=actor, action=action, target=target, detail=detail))

    # -- tokens -----------------------------------------------------------------------------

    async def create_token(
        self,
        actor: str,
        *,
        site: str | None,
        ttl_s: float | None = None,
        max_uses: int = 1,
        note: str = "",
        agent_id: str | None = None,
        devices: Sequence[DeviceSpec] = (),
    ) -> IssuedToken:
        [issued] = await self._create_tokens(
            actor, [(site, agent_id, list(devices))], ttl_s, max_uses, note
        )
        return issued

    async def _create_tokens(
        self,
        actor: str,
        plans: Sequence[tuple[str | None, str | None, list[DeviceSpec]]],
        ttl_s: float | None,
        max_uses: int,
        note: str,
        *,
        bulk: bool = False,
    ) -> list[IssuedToken]:
        ttl = self.settings.token_ttl_s if ttl_s is None else ttl_s
        if not 0 < ttl <= self.settings.max_token_ttl_s:
            raise InvalidRequest(f"ttl_s must be within (0, {self.settings.max_token_ttl_s:g}]")
        if max_uses < 1:
            raise InvalidRequest("max_uses must be at least 1")
        now = self._now()
        issued = []
        async with self.registry.session.begin() as db:
            for site, agent_id, devices in plans:
                token_id, secret, digest = new_token()
                row = ProvisioningTokenRow(
                    token_id=token_id,
                    token_hash=digest,
                    site=site,
                    agent_id=agent_id,
                    devices=[d.model_dump(exclude_none=True) for d in devices] or None,
                    note=note,
                    created_by=actor,
                    created_at=now,
                    expires_at=now + timedelta(seconds=ttl),
                    max_uses=max_uses,
                    uses=0,
                )
                db.add(row)
                self._audit(
                    db, actor, "token.create", f"token:{token_id}", site=site, agent_id=agent_id,
                    devices=len(devices), max_uses=max_uses, expires_at=row.expires_at.isoformat(),
                    note=note, bulk=bulk,
                )  # fmt: skip
                issued.append(
                    IssuedToken(
                        token_id, secret, site, agent_id, row.expires_at, max_uses, len(devices)
                    )
                )
        log.info("provisioning tokens created", actor=actor, count=len(issued))
        return issued

    async def list_tokens(
        self, site_scope: str | None = None, *, include_inactive: bool = False, limit: int = 1000
    ) -> list[ProvisioningTokenRow]:
        """Tokens, newest first; only ``site_scope``'s if given; usable ones unless asked."""
        query = select(ProvisioningTokenRow).order_by(ProvisioningTokenRow.created_at.desc())
        if site_scope is not None:
            query = query.where(ProvisioningTokenRow.site == site_scope)
        if not include_inactive:
            query = query.where(
                ProvisioningTokenRow.revoked_at.is_(None),
                ProvisioningTokenRow.expires_at > self._now(),
                ProvisioningTokenRow.uses < ProvisioningTokenRow.max_uses,
            )
        async with self.registry.session() as db:
            return list((await db.scalars(query.limit(limit))).all())

    async def revoke_token(
        self, actor: str, token_id: str, site_scope: str | None = None
    ) -> ProvisioningTokenRow:
        async with self.registry.session.begin() as db:
            row = await db.get(ProvisioningTokenRow, token_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no provisioning token '{token_id}'")
            if site_scope is not None and row.site != site_scope:
                raise ScopeViolation(f"token '{token_id}' is not one of site '{site_scope}'")
            if row.revoked_at is None:
                row.revoked_at = self._now()
                self._audit(db, actor, "token.revoke", f"token:{token_id}", site=row.site)
            return row

    # -- claims -----------------------------------------------------------------------------

    async def claim(
        self, token: str | None, agent_id: str, devices: Sequence[DeviceSpec], client_addr: str
    ) -> ClaimResult:
        """Exchange a token for broker credentials and register the agent and its devices.

        Raises RateLimited (checked first), TokenRefused, ScopeViolation,
        ProvisioningConflict, InvalidRequest or BrokerAdminError. Token failures count
        against ``client_addr``'s budget of failures for ``agent_id`` and in all
        (:class:`ClaimLimiter`).
        """
        self.limiter.check(client_addr, agent_id)
        try:
            return await self._claim(token or "", agent_id, devices)
        except TokenRefused as exc:
            self.limiter.failure(client_addr, agent_id)
            log.warning("claim refused", reason=exc.reason, agent_id=agent_id, client=client_addr)
            raise

    async def _claim(self, token: str, agent_id: str, devices: Sequence[DeviceSpec]) -> ClaimResult:
        if not token:
            raise TokenRefused("missing", "a provisioning token is required")
        now = self._now()
        digest = hash_token(token)
        username = f"agent-{agent_id}-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(32)
        created = False
        try:
            async with self.registry.session.begin() as db:
                row, specs = await self._claim_in(db, digest, agent_id, devices, now, username)
                await self.broker.create_agent(agent_id, username, password)
                created = True
        except BaseException:
            if created:  # the commit failed: take the broker user back
                await self.broker.delete_agent(agent_id, username)
            raise
        log.info("agent provisioned", agent_id=agent_id, devices=len(specs), site=row.site)
        return ClaimResult(
            agent_id=agent_id,
            site=row.site,
            mqtt=self.public_mqtt,
            username=username,
            password=password,
            client_id=agent_client_id(agent_id),
            topic_root=f"{ROOT}/{agent_id}",
            devices=[d.device_id for d in specs],
        )

    async def _claim_in(
        self,
        db: AsyncSession,
        digest: str,
        agent_id: str,
        devices: Sequence[DeviceSpec],
        now: datetime,
        username: str,
    ) -> tuple[ProvisioningTokenRow, list[DeviceSpec]]:
        """The database side of a claim, in the caller's transaction."""
        row = await db.scalar(
            select(ProvisioningTokenRow).where(ProvisioningTokenRow.token_hash == digest)
        )
        if row is None or not hashes_match(row.token_hash, digest):
            raise TokenRefused("unknown", "unknown provisioning token")
        check_usable(_state(row), now)
        if row.agent_id is not None and row.agent_id != agent_id:
            raise ScopeViolation(f"this token is for agent '{row.agent_id}', not '{agent_id}'")
        specs = _merge_devices(row, devices)
        previous = await self._check_free(db, agent_id, specs)
        consumed = cast(
            "CursorResult[Any]",
            await db.execute(
                update(ProvisioningTokenRow)
                .where(
                    ProvisioningTokenRow.token_id == row.token_id,
                    ProvisioningTokenRow.uses < ProvisioningTokenRow.max_uses,
                    ProvisioningTokenRow.revoked_at.is_(None),
                )
                .values(uses=ProvisioningTokenRow.uses + 1)
                .execution_options(synchronize_session=False)
            ),
        )
        if consumed.rowcount != 1:
            raise TokenRefused("exhausted", "the provisioning token was used up meanwhile")
        await self._register(db, agent_id, specs, now)
        if previous is not None:  # re-provisioning a revoked agent: old user goes first
            await self.broker.delete_agent(agent_id, previous.username)
            await db.delete(previous)
            await db.flush()
        db.add(
            AgentCredentialRow(
                agent_id=agent_id, username=username, token_id=row.token_id, created_at=now
            )
        )
        self._audit(
            db, f"agent:{agent_id}", "agent.claim", f"agent:{agent_id}",
            token_id=row.token_id, site=row.site, username=username,
            devices=[d.model_dump(exclude_none=True) for d in specs],
            reprovisioned=previous is not None,
        )  # fmt: skip
        return row, specs

    async def _check_free(
        self, db: AsyncSession, agent_id: str, specs: list[DeviceSpec]
    ) -> AgentCredentialRow | None:
        """Refuse if the agent holds live credentials or a device belongs to another agent;
        return the agent's revoked credentials, if any."""
        previous = await db.get(AgentCredentialRow, agent_id)
        if previous is not None and previous.revoked_at is None:
            raise ProvisioningConflict(
                f"agent '{agent_id}' is already provisioned; revoke it before provisioning again"
            )
        ids = [d.device_id for d in specs]
        for device in await db.scalars(select(DeviceRow).where(DeviceRow.device_id.in_(ids))):
            if device.agent_id != agent_id:
                raise ProvisioningConflict(
                    f"device '{device.device_id}' belongs to agent '{device.agent_id}'"
                )
        return previous

    @staticmethod
    async def _register(
        db: AsyncSession, agent_id: str, specs: list[DeviceSpec], now: datetime
    ) -> None:
        if await db.get(AgentRow, agent_id) is None:
            db.add(AgentRow(agent_id=agent_id, created_at=now))
            await db.flush()
        for spec in specs:
            device = await db.get(DeviceRow, spec.device_id)
            if device is None:
                device = DeviceRow(device_id=spec.device_id, created_at=now)
                db.add(device)
            device.agent_id = agent_id
            device.profile = spec.profile
            for name in _METADATA:
                if name in _DEVICE_COLUMNS:
                    setattr(device, name, getattr(spec, name))

    # -- revocation -------------------------------------------------------------------------

    async def revoke_agent(self, actor: str, agent_id: str) -> AgentCredentialRow:
        """Disable the agent's broker user and disconnect it. Idempotent."""
        async with self.registry.session.begin() as db:
            cred = await db.get(AgentCredentialRow, agent_id, with_for_update=True)
            if cred is None:
                raise NotFound(f"agent '{agent_id}' has no broker credentials")
            await self.broker.disable_agent(agent_id, cred.username)  # again, if it was
            if cred.revoked_at is None:
                cred.revoked_at = self._now()
                self._audit(db, actor, "agent.revoke", f"agent:{agent_id}", username=cred.username)
        log.info("agent revoked", agent_id=agent_id, actor=actor)
        return cred

    # -- bulk -------------------------------------------------------------------------------

    async def bulk_tokens_from_csv(
        self, actor: str, text: str, *, site_scope: str | None = None, ttl_s: float | None = None
    ) -> list[IssuedToken]:
        """One single-use, agent-bound token per agent in the CSV (see the module docstring)."""
        plans = parse_bulk_csv(text, site_scope, self.settings.bulk_max_rows)
        async with self.registry.session() as db:
            problems = []
            for agent_id, (_, specs) in plans.items():
                try:
                    await self._check_free(db, agent_id, specs)
                except ProvisioningConflict as exc:
                    problems.append(exc.detail)
        if problems:
            raise ProvisioningConflict("; ".join(problems))
        ordered = [(site, agent_id, specs) for agent_id, (site, specs) in plans.items()]
        return await self._create_tokens(actor, ordered, ttl_s, 1, "bulk CSV", bulk=True)

    # -- audit ------------------------------------------------------------------------------

    async def audit_log(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[AuditRow]:
        """Audit entries, newest first; page with ``before`` = the last id seen."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditRow.id < before)
        if action is not None:
            query = query.where(AuditRow.action == action)
        if target is not None:
            query = query.where(AuditRow.target == target)
        async with self.registry.session() as db:
            return list((await db.scalars(query)).all())


def _merge_devices(token: ProvisioningTokenRow, devices: Sequence[DeviceSpec]) -> list[DeviceSpec]:
    """The token's manifest plus the claim's own devices, each placed in the token's site."""
    planned = [DeviceSpec.model_validate(d) for d in token.devices or []]
    by_id = {d.device_id: d for d in planned}
    merged = list(planned)
    for device in devices:
        plan = by_id.get(device.device_id)
        if plan is not None:
            if plan.profile != device.profile:
                raise InvalidRequest(
                    f"device '{device.device_id}' is planned as '{plan.profile}', "
                    f"not '{device.profile}'"
                )
            continue
        by_id[device.device_id] = device
        merged.append(device)
    if len(merged) > MAX_DEVICES_PER_AGENT:
        raise InvalidRequest(f"at most {MAX_DEVICES_PER_AGENT} devices per agent")
    if token.site is None:
        return merged
    for device in merged:
        if device.site is not None and device.site != token.site:
            raise ScopeViolation(
                f"device '{device.device_id}' is at site '{device.site}'; "
                f"this token is for site '{token.site}'"
            )
    return [d if d.site is not None else d.model_copy(update={"site": token.site}) for d in merged]


def _parse_tags(text: str) -> dict[str, str]:
    tags = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"tag {item!r} is not key=value")
        tags[key.strip()] = value.strip()
    return tags


def _parse_row(
    cells: dict[str, str], line: int, site_scope: str | None
) -> tuple[str, str | None, DeviceSpec]:
    """(agent id, site, device) of one CSV row, or ValueError listing its problems."""
    agent_id = cells["agent_id"]
    site = cells.get("site") or site_scope
    problems = []
    if not _valid_id(agent_id):
        problems.append(f"line {line}, agent_id: {agent_id!r} does not match {ID_PATTERN}")
    if site_scope is not None and site != site_scope:
        problems.append(f"line {line}, site: '{site}' is outside your site '{site_scope}'")
    try:
        tags = _parse_tags(cells.get("tags", ""))
    except ValueError as exc:
        problems.append(f"line {line}, tags: {exc}")
        tags = {}
    fields = {k: v for k, v in cells.items() if v and k not in ("agent_id", "tags", "site")}
    try:
        spec = DeviceSpec.model_validate({**fields, "site": site, "tags": tags})
    except ValidationError as exc:
        problems += [
            f"line {line}, {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        ]
    if problems:
        raise ValueError("; ".join(problems))
    return agent_id, site, spec


def parse_bulk_csv(
    text: str, site_scope: str | None, max_rows: int
) -> dict[str, tuple[str | None, list[DeviceSpec]]]:
    """Agent id → (site, devices) from a bulk CSV; InvalidRequest lists every bad row."""
    try:
        return _parse_bulk_csv(text, site_scope, max_rows)
    except csv.Error as exc:  # e.g. a bare CR in an unquoted field, a field over the limit
        raise InvalidRequest(f"not valid CSV: {exc}") from exc


def _parse_bulk_csv(
    text: str, site_scope: str | None, max_rows: int
) -> dict[str, tuple[str | None, list[DeviceSpec]]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    problems = [f"unknown column '{h}'" for h in header if h not in CSV_COLUMNS]
    problems += [f"missing column '{c}'" for c in _REQUIRED_COLUMNS if c not in header]
    if problems:
        raise InvalidRequest("; ".join(problems) + f" (columns: {', '.join(CSV_COLUMNS)})")
    plans: dict[str, tuple[str | None, list[DeviceSpec]]] = {}
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if line > max_rows + 1:
            raise InvalidRequest(f"more than {max_rows} rows")
        if None in row:
            problems.append(f"line {line}: more cells than columns")
            continue
        cells = {k: (v or "").strip() for k, v in row.items()}
        if not any(cells.values()):
            continue
        try:
            agent_id, site, spec = _parse_row(cells, line, site_scope)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if spec.device_id in seen:
            problems.append(
                f"line {line}, device_id: '{spec.device_id}' already on line {seen[spec.device_id]}"
            )
            continue
        seen[spec.device_id] = line
        agent_site, specs = plans.setdefault(agent_id, (site, []))
        if agent_site != site:
            problems.append(f"line {line}, site: agent '{agent_id}' is at site '{agent_site}'")
            continue
        specs.append(spec)
    if problems:
        raise InvalidRequest("; ".join(problems))
    if not plans:
        raise InvalidRequest("the CSV has no rows")
    return plans


def _valid_id(value: str) -> bool:
    return _ID.match(value) is not None
