"""People's accounts: hashes, sign-in and its limit, sessions, password change."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud_hub.console.accounts import (
    Accounts,
    BadCredentials,
    SignInLimited,
    UserExists,
    WeakPassword,
)
from cloud_hub.console.models import UserRow, UserSessionRow
from cloud_hub.provisioning.models import AuditRow
from cloud_hub.registry import Registry

pytestmark = pytest.mark.unit

PASSWORD = "correct horse battery"


@pytest.fixture
async def accounts(tmp_path: Path) -> AsyncIterator[Accounts]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    yield Accounts(registry, failures_per_minute=1, burst=3, address_factor=2)
    await registry.close()


async def test_a_password_is_stored_as_an_argon2_hash_and_signs_in(accounts: Accounts) -> None:
    await accounts.create_user("cli", "ops", PASSWORD, "operator", site="north")
    async with accounts.registry.session() as db:
        row = await db.get(UserRow, "ops")
        audit = (await db.scalars(select(AuditRow))).all()
    assert row is not None and row.password_hash.startswith("$argon2id$")
    assert PASSWORD not in row.password_hash
    assert [(a.actor, a.action, a.target) for a in audit] == [("cli", "user.create", "user:ops")]
    signed = await accounts.sign_in("ops", PASSWORD, "10.0.0.1")
    found = await accounts.session(signed.token)
    assert found is not None and found[0].username == "ops" and found[0].site == "north"
    async with accounts.registry.session() as db:
        stored = (await db.scalars(select(UserSessionRow))).all()
    assert [s.token_hash for s in stored] != [signed.token]  # only its hash is kept
    await accounts.sign_out(signed.token)
    assert await accounts.session(signed.token) is None


@pytest.mark.parametrize(
    ("username", "password", "role", "error"),
    [
        ("ops", "short", "operator", WeakPassword),
        ("longusername", "LongUserName", "operator", WeakPassword),
        ("ops", PASSWORD, "root", ValueError),
        ("two words", PASSWORD, "viewer", ValueError),
    ],
)
async def test_bad_accounts_are_refused(
    accounts: Accounts, username: str, password: str, role: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await accounts.create_user("cli", username, password, role)


async def test_a_taken_username_is_refused(accounts: Accounts) -> None:
    await accounts.create_user("cli", "ops", PASSWORD, "operator")
    with pytest.raises(UserExists):
        await accounts.create_user("cli", "ops", PASSWORD, "viewer")


async def test_failed_sign_ins_are_limited_per_address_and_user(accounts: Accounts) -> None:
    await accounts.create_user("cli", "ops", PASSWORD, "operator")
    for _ in range(3):
        with pytest.raises(BadCredentials):
            await accounts.sign_in("ops", "wrong password", "10.0.0.1")
    with pytest.raises(SignInLimited):  # even with the right password, for now
        await accounts.sign_in("ops", PASSWORD, "10.0.0.1")
    await accounts.sign_in("ops", PASSWORD, "10.0.0.2")  # another address is not locked out
    for name in "abcdef":  # one address trying many names: 2 x 3 failures at most
        with pytest.raises(BadCredentials):
            await accounts.sign_in(name, PASSWORD, "10.0.0.3")
    with pytest.raises(SignInLimited):
        await accounts.sign_in("x", PASSWORD, "10.0.0.3")


async def test_a_password_change_ends_the_other_sessions(accounts: Accounts) -> None:
    await accounts.create_user("cli", "ops", PASSWORD, "operator")
    here = await accounts.sign_in("ops", PASSWORD, "10.0.0.1")
    there = await accounts.sign_in("ops", PASSWORD, "10.0.0.2")
    with pytest.raises(BadCredentials):
        await accounts.change_password("ops", "not the old one", "a new long password", here.token)
    with pytest.raises(WeakPassword):
        await accounts.change_password("ops", PASSWORD, "short", here.token)
    await accounts.change_password("ops", PASSWORD, "a new long password", here.token)
    assert await accounts.session(here.token) is not None
    assert await accounts.session(there.token) is None
    with pytest.raises(BadCredentials):
        await accounts.sign_in("ops", PASSWORD, "10.0.0.4")
    await accounts.sign_in("ops", "a new long password", "10.0.0.4")


async def test_an_expired_session_is_worth_nothing(accounts: Accounts) -> None:
    await accounts.create_user("cli", "ops", PASSWORD, "operator")
    accounts.session_ttl = timedelta(seconds=-1)
    signed = await accounts.sign_in("ops", PASSWORD, "10.0.0.1")
    assert await accounts.session(signed.token) is None
