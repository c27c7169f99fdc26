"""People's accounts: argon2 password hashes, sign-in with a rate limit, sessions, CSRF tokens.

A session is a random 256-bit secret in an HTTP-only cookie; the registry keeps only its
SHA-256 (a stolen database yields no session), with the session's CSRF token and its expiry.
Signing out deletes it; changing the password ends every other session of the person, and
an administrator changing a person's role or site ends all of theirs (they sign in again with
the new permissions).
Failed sign-ins are limited per client address and username (and per address alone, at
``address_factor`` times that) before the password is even checked.

Errors::

    AccountError
    ├── BadCredentials     unknown user, wrong password or disabled account (one message)
    ├── SignInLimited      too many failed sign-ins: retry after ``retry_after_s``
    ├── WeakPassword       a new password shorter than MIN_PASSWORD or equal to the username
    └── UserExists         create_user with a taken username
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from cloud_hub.api.keys import Role
from cloud_hub.console.models import UserRow, UserSessionRow
from cloud_hub.provisioning.models import AuditRow
from cloud_hub.provisioning.tokens import FailureLimiter, RateLimited
from cloud_hub.registry import Registry

__all__ = [
    "LANGUAGES",
    "MIN_PASSWORD",
    "ROLES",
    "UNCHANGED",
    "USERNAME_PATTERN",
    "AccountError",
    "Accounts",
    "BadCredentials",
    "SignIn",
    "SignInLimited",
    "Unchanged",
    "UserExists",
    "WeakPassword",
]

log = structlog.get_logger(__name__)

MIN_PASSWORD = 10
#: a username: Latin or Chinese letters, digits and . _ @ - (the API's schema says the same)
USERNAME_PATTERN = r"^[A-Za-z0-9._@\u4e00-\u9fff-]{1,64}$"
LANGUAGES = ("zh", "en")
ROLES: tuple[str, ...] = get_args(Role)
#: verified against when the user is unknown, so that a probe cannot time the difference
_DUMMY_HASH = PasswordHasher().hash("not a password of anybody")


class Unchanged(enum.Enum):
    """The value of an :meth:`Accounts.update_user` argument left as it is."""

    UNCHANGED = "unchanged"


UNCHANGED: Final = Unchanged.UNCHANGED
#: changing one of these ends the person's sessions (what they may do changed)
_PERMISSION_FIELDS = frozenset({"role", "site"})


class AccountError(Exception):
    pass


class BadCredentials(AccountError):
    def __init__(self) -> None:
        super().__init__("unknown username or wrong password")


class SignInLimited(AccountError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class WeakPassword(AccountError):
    pass


class UserExists(AccountError):
    pass


@dataclass(frozen=True)
class SignIn:
    """A new session: the cookie's secret (shown to the browser only) and its CSRF token."""

    token: str
    csrf_token: str
    user: UserRow
    expires_at: datetime


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


def check_password(username: str, password: str) -> None:
    """WeakPassword if ``password`` may not be used."""
    if len(password) < MIN_PASSWORD:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD} characters")
    if password.casefold() == username.casefold():
        raise WeakPassword("a password must not be the username")


class Accounts:
    """People's accounts and sessions in the registry."""

    def __init__(
        self,
        registry: Registry,
        *,
        session_ttl: timedelta = timedelta(hours=12),
        failures_per_minute: float = 5.0,
        burst: int = 5,
        address_factor: int = 4,
    ) -> None:
        self.registry = registry
        self.session_ttl = session_ttl
        self._hasher = PasswordHasher()
        self._per_user = FailureLimiter(failures_per_minute, burst)
        self._per_address = FailureLimiter(
            failures_per_minute * address_factor, burst * address_factor
        )

    # -- accounts ---------------------------------------------------------------------------

    async def create_user(
        self,
        actor: str,
        username: str,
        password: str,
        role: str,
        site: str | None = None,
        language: str = "zh",
    ) -> UserRow:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        if re.fullmatch(USERNAME_PATTERN, username) is None:
            raise ValueError("a username is 1 to 64 letters (Latin or Chinese), digits or . _ @ -")
        check_password(username, password)
        now = _now()
        async with self.registry.session.begin() as db:
            if await db.get(UserRow, username) is not None:
                raise UserExists(f"user {username!r} exists already")
            row = UserRow(
                username=username,
                password_hash=self._hasher.hash(password),
                role=role,
                site=site,
                language=language,
                created_at=now,
                password_changed_at=now,
            )
            db.add(row)
            db.add(
                AuditRow(
                    at=now,
                    actor=actor,
                    action="user.create",
                    target=f"user:{username}",
                    detail={"role": role, "site": site},
                )
            )
        log.info("user created", username=username, role=role, site=site, actor=actor)
        return row

    async def update_user(
        self,
        actor: str,
        username: str,
        *,
        role: str | Literal[Unchanged.UNCHANGED] = UNCHANGED,
        site: str | Literal[Unchanged.UNCHANGED] | None = UNCHANGED,
        language: str | Literal[Unchanged.UNCHANGED] = UNCHANGED,
    ) -> UserRow:
        """Change a person's role, site (None: every site) and language, checked as
        :meth:`create_user` checks them; what is given and differs changes, audited as
        ``user.update`` with its before and after. A new role or site ends every session of
        the person (they sign in again with the new permissions); a new language alone does
        not. LookupError if there is no such user."""
        if role is not UNCHANGED and role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if language is not UNCHANGED and language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        wanted: dict[str, Any] = {
            name: value
            for name, value in (("role", role), ("site", site), ("language", language))
            if value is not UNCHANGED
        }
        async with self.registry.session.begin() as db:
            row = await db.get(UserRow, username, with_for_update=True)
            if row is None:
                raise LookupError(f"no user {username!r}")
            before = {n: getattr(row, n) for n, v in wanted.items() if getattr(row, n) != v}
            if not before:
                return row
            after = {name: wanted[name] for name in before}
            for name, value in after.items():
                setattr(row, name, value)
            if _PERMISSION_FIELDS & after.keys():
                await db.execute(delete(UserSessionRow).where(UserSessionRow.username == username))
            db.add(
                AuditRow(
                    at=_now(),
                    actor=actor,
                    action="user.update",
                    target=f"user:{username}",
                    detail={"before": before, "after": after},
                )
            )
        log.info("user updated", username=username, actor=actor, **after)
        return row

    async def reset_password(self, actor: str, username: str, password: str) -> None:
        """Set a password without the old one (an administrator, the demo); every session of
        the user ends. LookupError if there is no such user."""
        check_password(username, password)
        async with self.registry.session.begin() as db:
            row = await db.get(UserRow, username, with_for_update=True)
            if row is None:
                raise LookupError(f"no user {username!r}")
            row.password_hash = self._hasher.hash(password)
            row.password_changed_at = _now()
            await db.execute(delete(UserSessionRow).where(UserSessionRow.username == username))
            db.add(
                AuditRow(
                    at=_now(),
                    actor=actor,
                    action="user.password_reset",
                    target=f"user:{username}",
                    detail={},
                )
            )

    async def change_password(self, username: str, old: str, new: str, keep_token: str) -> None:
        """Change a password (the old one checked); every other session of the user ends."""
        check_password(username, new)
        async with self.registry.session.begin() as db:
            row = await db.get(UserRow, username, with_for_update=True)
            if row is None or not self._verify(row.password_hash, old):
                raise BadCredentials
            row.password_hash = self._hasher.hash(new)
            row.password_changed_at = _now()
            await db.execute(
                delete(UserSessionRow).where(
                    UserSessionRow.username == username,
                    UserSessionRow.token_hash != _hash_token(keep_token),
                )
            )
            db.add(
                AuditRow(
                    at=_now(),
                    actor=f"user:{username}",
                    action="user.password_change",
                    target=f"user:{username}",
                    detail={},
                )
            )

    async def list_users(self, site: str | None = None) -> list[UserRow]:
        """Every account (with ``site``: that site's), by username."""
        query = select(UserRow).order_by(UserRow.username)
        if site is not None:
            query = query.where(UserRow.site == site)
        async with self.registry.session() as db:
            return list((await db.scalars(query)).all())

    async def get_user(self, username: str) -> UserRow | None:
        async with self.registry.session() as db:
            return await db.get(UserRow, username)

    async def disable_user(self, actor: str, username: str) -> UserRow:
        """Disable an account and end its sessions (idempotent); LookupError if unknown."""
        async with self.registry.session.begin() as db:
            row = await db.get(UserRow, username, with_for_update=True)
            if row is None:
                raise LookupError(f"no user {username!r}")
            await db.execute(delete(UserSessionRow).where(UserSessionRow.username == username))
            if row.disabled_at is None:
                row.disabled_at = _now()
                db.add(
                    AuditRow(
                        at=_now(),
                        actor=actor,
                        action="user.disable",
                        target=f"user:{username}",
                        detail={},
                    )
                )
        return row

    async def set_language(self, username: str, language: str) -> None:
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}")
        async with self.registry.session.begin() as db:
            row = await db.get(UserRow, username)
            if row is not None:
                row.language = language

    # -- sessions ---------------------------------------------------------------------------

    async def sign_in(self, username: str, password: str, address: str) -> SignIn:
        """A new session, or BadCredentials / SignInLimited (checked first)."""
        for limiter, key in (
            (self._per_user, f"{address}|{username}"),
            (self._per_address, address),
        ):
            try:
                limiter.check(key)
            except RateLimited as exc:
                raise SignInLimited(exc.retry_after_s) from None
        async with self.registry.session() as db:
            row = await db.get(UserRow, username)
        if row is None or row.disabled_at is not None:
            self._verify(_DUMMY_HASH, password)  # as long as a real check
            self._failed(username, address)
        elif not self._verify(row.password_hash, password):
            self._failed(username, address)
        assert row is not None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = _now()
        async with self.registry.session.begin() as db:
            await db.execute(delete(UserSessionRow).where(UserSessionRow.expires_at < now))
            db.add(
                UserSessionRow(
                    token_hash=_hash_token(token),
                    username=username,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + self.session_ttl,
                )
            )
            db.add(
                AuditRow(
                    at=now,
                    actor=f"user:{username}",
                    action="user.sign_in",
                    target=f"user:{username}",
                    detail={"address": address},
                )
            )
        return SignIn(token, csrf, row, now + self.session_ttl)

    def _failed(self, username: str, address: str) -> None:
        self._per_user.failure(f"{address}|{username}")
        self._per_address.failure(address)
        log.warning("console sign-in refused", username=username, address=address)
        raise BadCredentials

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def session(self, token: str) -> tuple[UserRow, UserSessionRow] | None:
        """The user and session of a cookie's secret, if it is valid now."""
        async with self.registry.session() as db:
            found = (
                await db.execute(
                    select(UserRow, UserSessionRow)
                    .join(UserSessionRow, UserSessionRow.username == UserRow.username)
                    .where(UserSessionRow.token_hash == _hash_token(token))
                )
            ).one_or_none()
        if found is None:
            return None
        user, session = found
        expires = session.expires_at
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        if expires <= _now() or user.disabled_at is not None:
            return None
        return user, session

    async def sign_out(self, token: str) -> None:
        async with self.registry.session.begin() as db:
            await db.execute(
                delete(UserSessionRow).where(UserSessionRow.token_hash == _hash_token(token))
            )
