"""Provisioning tokens (claim codes), the provisioning errors, and the guessing limiter.

A token is ``cpt_`` followed by 24 random bytes in URL-safe base64 (192 bits): shown once,
stored only as its SHA-256 hash. Like API keys, tokens are high-entropy secrets, not
passwords, so a fast hash is right: nobody can brute-force 192 bits, and a database dump
reveals no usable token. The hash is looked up through its unique index and the stored hash
compared with :func:`hmac.compare_digest`, so timing says nothing about a secret.

Errors (one tree; the HTTP status each maps to in brackets)::

    ProvisioningError
    ├── TokenRefused         missing/unknown [401], expired/exhausted/revoked [410]
    ├── RateLimited          too many failed claims from one address [429, Retry-After]
    ├── ScopeViolation       token's site or agent binding does not allow the request [403]
    ├── ProvisioningConflict agent already provisioned, device owned by another agent [409]
    ├── InvalidRequest       unknown profile, bad CSV row [422]
    ├── NotFound             no such token or agent [404]
    └── BrokerAdminError     the broker refused or did not answer an admin command [502]
        (defined in cloud_hub.provisioning.broker)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "TOKEN_BYTES",
    "TOKEN_PREFIX",
    "ClaimLimiter",
    "FailureLimiter",
    "InvalidRequest",
    "NotFound",
    "ProvisioningConflict",
    "ProvisioningError",
    "RateLimited",
    "RefusalReason",
    "ScopeViolation",
    "TokenRefused",
    "TokenState",
    "aware",
    "check_usable",
    "hash_token",
    "hashes_match",
    "new_token",
]

TOKEN_PREFIX = "cpt_"  # noqa: S105 - a public marker for secret scanners, not a secret
#: 24 bytes = 192 bits of entropy (at least 128 are required).
TOKEN_BYTES = 24

RefusalReason = Literal["missing", "unknown", "expired", "exhausted", "revoked"]


class ProvisioningError(Exception):
    """Base of every provisioning error; ``status`` is the HTTP status it maps to."""

    status = 400
    reason = "invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TokenRefused(ProvisioningError):
    """The provisioning token cannot be used; ``reason`` says why."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.status = 401 if reason in ("missing", "unknown") else 410


class RateLimited(ProvisioningError):
    status = 429
    reason = "rate_limited"

    def __init__(self, retry_after_s: float) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(f"too many failed claims from this address; retry in {seconds} s")
        self.retry_after_s = seconds


class ScopeViolation(ProvisioningError):
    status = 403
    reason = "out_of_scope"


class ProvisioningConflict(ProvisioningError):
    status = 409
    reason = "conflict"


class InvalidRequest(ProvisioningError):
    status = 422
    reason = "invalid"


class NotFound(ProvisioningError):
    status = 404
    reason = "not_found"


def new_token() -> tuple[str, str, str]:
    """A fresh token: (token id, the secret to show once, its hash to store)."""
    token_id = secrets.token_hex(8)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return token_id, secret, hash_token(secret)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hashes_match(stored: str, presented: str) -> bool:
    """Constant-time comparison of two token hashes."""
    return hmac.compare_digest(stored.encode(), presented.encode())


def aware(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite hands back naive ones; we store UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TokenState:
    """The fields of a stored token that decide whether it may be used."""

    expires_at: datetime
    max_uses: int
    uses: int
    revoked_at: datetime | None


def check_usable(token: TokenState, now: datetime) -> None:
    """Raise TokenRefused (revoked, expired or exhausted: each its own reason) or return."""
    if token.revoked_at is not None:
        raise TokenRefused("revoked", "the provisioning token was revoked")
    if aware(token.expires_at) <= now:
        raise TokenRefused(
            "expired", f"the provisioning token expired at {aware(token.expires_at).isoformat()}"
        )
    if token.uses >= token.max_uses:
        raise TokenRefused(
            "exhausted", f"the provisioning token was already used {token.uses} time(s)"
        )


class FailureLimiter:
    """Token bucket per client address, spent by failed claims only.

    Each address may fail ``burst`` times in a row; the bucket refills at
    ``failures_per_minute``. While it is empty every claim from the address is refused with
    :class:`RateLimited` before the token is even looked at. At most ``max_clients``
    addresses are tracked (least recently failing dropped first), bounding memory under a
    spray of addresses. Per process: behind several API replicas put a limit in the proxy too.
    """

    def __init__(
        self,
        failures_per_minute: float = 10.0,
        burst: int = 10,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures_per_minute <= 0 or burst < 1:
            raise ValueError("failures_per_minute must be > 0 and burst >= 1")
        self.rate_per_s = failures_per_minute / 60.0
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # level, at

    def _level(self, client: str, now: float) -> float:
        level, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, level + (now - at) * self.rate_per_s)

    def check(self, client: str) -> None:
        """Raise RateLimited if ``client`` has no failures left right now."""
        now = self._clock()
        level = self._level(client, now)
        if level < 1.0:
            raise RateLimited((1.0 - level) / self.rate_per_s)

    def failure(self, client: str) -> None:
        """Spend one failure of ``client``'s bucket."""
        now = self._clock()
        level = max(0.0, self._level(client, now) - 1.0)
        self._buckets[client] = (level, now)
        self._buckets.move_to_end(client)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


#: how many times the per-agent budget one client address has in all
ADDRESS_FACTOR = 10


class ClaimLimiter:
    """Failed claims, limited twice, both before the token is looked at: per client address
    and agent id (the configured budget), and per client address alone (``address_factor``
    times it).

    A guesser hammering one agent's claim is held to the budget; one trying many agent ids
    to ``address_factor`` times it. A technician claiming their own agent behind the same
    address (one NAT for a whole district) is not locked out by a guesser or a misconfigured
    cabinet retrying with other agent ids, unless that one spends the whole address budget.
    ``client`` must be the real client address (the hub trusts forwarded headers only from
    ``api.trusted_proxies``).
    """

    def __init__(
        self,
        failures_per_minute: float = 10.0,
        burst: int = 10,
        *,
        address_factor: int = ADDRESS_FACTOR,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_agent = FailureLimiter(
            failures_per_minute, burst, max_clients=max_clients, clock=clock
        )
        self.per_address = FailureLimiter(
            failures_per_minute * address_factor,
            burst * address_factor,
            max_clients=max_clients,
            clock=clock,
        )

    @staticmethod
    def _key(client: str, agent_id: str) -> str:
        return f"{client} {agent_id}"  # no space in an address nor in an agent id

    def check(self, client: str, agent_id: str) -> None:
        """Raise RateLimited if ``client`` may not fail a claim of ``agent_id`` right now."""
        self.per_address.check(client)
        self.per_agent.check(self._key(client, agent_id))

    def failure(self, client: str, agent_id: str) -> None:
        self.per_address.failure(client)
        self.per_agent.failure(self._key(client, agent_id))
