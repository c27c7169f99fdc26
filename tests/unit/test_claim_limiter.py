"""The claim limiter's two budgets, and the setting of the proxies whose forwarded headers the
hub trusts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud_hub.provisioning.tokens import ClaimLimiter, RateLimited
from cloud_hub.settings import ApiSettings, HubSettings

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_agent_s_budget_and_the_address_s_budget() -> None:
    clock = Clock()
    limiter = ClaimLimiter(failures_per_minute=6, burst=2, address_factor=3, clock=clock)
    for _ in range(2):
        limiter.check("10.0.0.1", "cab-a")
        limiter.failure("10.0.0.1", "cab-a")
    with pytest.raises(RateLimited):
        limiter.check("10.0.0.1", "cab-a")
    limiter.check("10.0.0.1", "cab-b")  # another agent behind the same address: its own budget
    limiter.check("10.0.0.2", "cab-a")  # another address: its own
    for agent in ("cab-b", "cab-c", "cab-d", "cab-e"):
        limiter.failure("10.0.0.1", agent)
    with pytest.raises(RateLimited):  # 6 failures in all: the address's budget is spent
        limiter.check("10.0.0.1", "cab-f")
    clock.now += 10  # the address has 3 failures back (18 per minute)
    limiter.check("10.0.0.1", "cab-f")


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert ApiSettings().trusted_proxies == []
    assert ApiSettings(trusted_proxies=["10.0.0.5", "10.0.0.0/24", "::1"]).trusted_proxies
    with pytest.raises(ValidationError, match=r"api\.trusted_proxies\.1\n.*'\*' is not an IP"):
        HubSettings.model_validate({"api": {"trusted_proxies": ["10.0.0.5", "*"]}})
