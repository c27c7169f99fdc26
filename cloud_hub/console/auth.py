"""Who is signed in to the console, and the CSRF check of every form.

The session cookie (``hub_session``: HTTP-only, ``SameSite=Lax``, ``Secure`` when the request
came over HTTPS) names a session in the registry (:mod:`cloud_hub.console.accounts`). A page
gets a :class:`Viewer`: the person as a :class:`~cloud_hub.api.auth.Principal` (``key_id``
``user:<name>``, the actor of every audit entry), with the session's CSRF token and their
language. Every POST must carry that token (form field ``csrf_token``); without it, or with
another, it is refused with 403 and nothing happens.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Form, Request

from cloud_hub.api.auth import Permission, Principal
from cloud_hub.console.accounts import Accounts
from cloud_hub.hub import Hub

__all__ = [
    "COOKIE",
    "CsrfRefused",
    "Forbidden",
    "Person",
    "Posted",
    "SignInRequired",
    "Viewer",
    "accounts_of",
    "checked_csrf",
    "hub_of",
    "viewer",
]

COOKIE = "hub_session"


class SignInRequired(Exception):
    """No valid session: the page answers with a redirect to the sign-in page."""


class Forbidden(Exception):
    """The person's role may not do this (403)."""


class CsrfRefused(Exception):
    """A form without this session's CSRF token (403)."""


@dataclass(frozen=True)
class Viewer:
    principal: Principal
    csrf_token: str
    language: str
    token: str

    @property
    def username(self) -> str:
        return self.principal.name

    def may(self, permission: Permission) -> bool:
        return self.principal.may(permission)


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def accounts_of(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


async def viewer(request: Request) -> Viewer:
    """The signed-in person, or SignInRequired."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired
    found = await accounts_of(request).session(token)
    if found is None:
        raise SignInRequired
    user, session = found
    principal = Principal(
        key_id=f"user:{user.username}",
        name=user.username,
        role=user.role,  # type: ignore[arg-type]  # validated when the user was created
        site=user.site,
    )
    request.state.principal = principal
    return Viewer(principal, session.csrf_token, user.language, token)


async def checked_csrf(
    request: Request,
    person: Annotated[Viewer, Depends(viewer)],
    csrf_token: Annotated[str, Form()] = "",
) -> Viewer:
    """The signed-in person, if the form carries their session's CSRF token."""
    if not csrf_token or not hmac.compare_digest(csrf_token, person.csrf_token):
        raise CsrfRefused
    return person


#: a page's signed-in person; a form's, with its CSRF token checked
Person = Annotated[Viewer, Depends(viewer)]
Posted = Annotated[Viewer, Depends(checked_csrf)]
