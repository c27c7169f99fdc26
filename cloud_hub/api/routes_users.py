"""People's console accounts, managed by administrators: list, create, disable, reset a password.

A site-scoped admin key sees and manages only the accounts of its site, and creates accounts
of its site only. Passwords are never returned; every change is audited as the caller.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from cloud_hub.api.deps import Admin
from cloud_hub.api.keys import Role
from cloud_hub.api.problems import problem_responses
from cloud_hub.api.schemas import UtcDateTime
from cloud_hub.api.scope import confined_site, not_found
from cloud_hub.console.accounts import (
    USERNAME_PATTERN,
    AccountError,
    UserExists,
    WeakPassword,
)
from cloud_hub.console.auth import accounts_of
from cloud_hub.console.models import UserRow

__all__ = ["PasswordReset", "UserCreate", "UserOut", "router"]

router = APIRouter(prefix="/api/v1/users", tags=["users"])


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(
        pattern=USERNAME_PATTERN,
        description="Letters (Latin or Chinese), digits and . _ @ -, at most 64.",
    )
    password: str = Field(min_length=10, max_length=256, description="At least 10 characters.")
    role: Role
    site: str | None = Field(default=None, max_length=64)
    language: Literal["zh", "en"] = "zh"


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=10, max_length=256)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    username: str
    role: str
    site: str | None
    language: str
    created_at: UtcDateTime
    password_changed_at: UtcDateTime
    disabled_at: UtcDateTime | None


async def _visible(request: Request, caller: Admin, username: str) -> UserRow:
    row = await accounts_of(request).get_user(username)
    if row is None or (caller.site is not None and row.site != caller.site):
        raise not_found(f"no user '{username}'")
    return row


@router.get("", responses=problem_responses(401, 403))
async def list_users(request: Request, caller: Admin) -> list[UserOut]:
    """Console accounts by username (a site-scoped key: its site's)."""
    return [UserOut.model_validate(r) for r in await accounts_of(request).list_users(caller.site)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(401, 403, 409, 422, s409="The username is taken"),
)
async def create_user(request: Request, body: UserCreate, caller: Admin) -> UserOut:
    """Create a console account (the password is stored as an argon2 hash, never returned)."""
    site = confined_site(caller, body.site)
    try:
        row = await accounts_of(request).create_user(
            caller.key_id, body.username, body.password, body.role, site, body.language
        )
    except UserExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except (WeakPassword, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return UserOut.model_validate(row)


@router.post("/{username}/disable", responses=problem_responses(401, 403, 404))
async def disable_user(request: Request, username: str, caller: Admin) -> UserOut:
    """Disable an account and sign it out everywhere (idempotent)."""
    await _visible(request, caller, username)
    return UserOut.model_validate(await accounts_of(request).disable_user(caller.key_id, username))


@router.post(
    "/{username}/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 403, 404, 422),
)
async def reset_password(
    request: Request, username: str, body: PasswordReset, caller: Admin
) -> None:
    """Set a new password (a forgotten one); every session of the account ends."""
    await _visible(request, caller, username)
    try:
        await accounts_of(request).reset_password(caller.key_id, username, body.password)
    except AccountError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
