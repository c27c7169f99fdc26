"""People's console accounts, managed by administrators: list, create, change (role, site,
language), disable, reset a password.

A site-scoped admin key sees and manages only the accounts of its site, and creates accounts
of its site only (and moves none elsewhere). An administrator signed in as a person cannot take
their own admin role or change their own site (they would lock themselves out). Passwords are
never returned; every change is audited as the caller.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from cloud_hub.api.deps import Admin
from cloud_hub.api.keys import Role
from cloud_hub.api.problems import problem_responses
from cloud_hub.api.schemas import UtcDateTime
from cloud_hub.api.scope import confined_site, not_found
from cloud_hub.console.accounts import (
    UNCHANGED,
    USERNAME_PATTERN,
    AccountError,
    UserExists,
    WeakPassword,
)
from cloud_hub.console.auth import accounts_of
from cloud_hub.console.models import UserRow

__all__ = ["PasswordReset", "UserCreate", "UserOut", "UserUpdate", "router"]

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


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class UserUpdate(BaseModel):
    """What to change of an account: only the fields given change (``site: null``: every
    site; ``role`` and ``language`` are never null)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"role": "operator", "site": "north"}]}
    )

    role: Role | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    site: str | None = Field(
        default=None,
        max_length=64,
        description="null: every site. A site-scoped key may set its own site only.",
        json_schema_extra=_no_default,
    )
    language: Literal["zh", "en"] | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )

    @field_validator("role", "language")
    @classmethod
    def _given_not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("may be left out, not null")
        return value


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


@router.patch(
    "/{username}",
    responses=problem_responses(
        401,
        403,
        404,
        422,
        s403="Not an admin key, a site other than the key's own, or the caller's own admin role"
        " or site (you would lock yourself out)",
    ),
)
async def update_user(request: Request, username: str, body: UserUpdate, caller: Admin) -> UserOut:
    """Change an account's role, site or language (only the fields given). A new role or site
    ends every session of the account (the person signs in again); a new language does not."""
    row = await _visible(request, caller, username)
    given = body.model_fields_set
    site = row.site
    if "site" in given:
        if caller.site is not None and body.site is None:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this key is limited to site '{caller.site}'"
            )
        site = confined_site(caller, body.site)
    if caller.key_id == f"user:{username}" and (
        ("role" in given and body.role != "admin") or site != row.site
    ):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "you would lock yourself out")
    try:
        updated = await accounts_of(request).update_user(
            caller.key_id,
            username,
            role=body.role if body.role is not None else UNCHANGED,
            site=site if "site" in given else UNCHANGED,
            language=body.language if body.language is not None else UNCHANGED,
        )
    except LookupError as exc:  # disappeared meanwhile
        raise not_found(f"no user '{username}'") from exc
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    return UserOut.model_validate(updated)


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
