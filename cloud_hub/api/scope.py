"""Object-level checks: a key scoped to a site (any role's ``site``) sees and acts on only the
objects of that site; anything else answers 404, as if it did not exist, and lists leave it out.

Every route that returns or changes an object tied to a site goes through these helpers, so
the rule lives here once (which site an object belongs to: :mod:`cloud_hub.sites`):

    device            its site
    agent             the sites of its devices (agent config, CoAP secret, revocation too)
    command           its device's
    alarm             its device's, or its agent's for an alarm about a whole agent
    dead letter       its agent's (none known: unscoped keys only)
    command group,    the site its selector is confined to (a site-scoped key's always is;
    lighting strategy   one selecting across sites is seen by unscoped keys only)
    webhook, API key  their own ``site``
    events            their device's or agent's (the SSE stream filters by the caller's site)

``tests/integration/test_site_scope.py`` enumerates every route of the app against a
site-scoped key, so a new route cannot forget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import HTTPException, status

from cloud_hub.alarms import AlarmRow
from cloud_hub.api.auth import Principal
from cloud_hub.dead_letters.models import DeadLetterRow
from cloud_hub.hub import Hub
from cloud_hub.registry import CommandRow, DeviceRow
from cloud_hub.sites import Sites, sees

__all__ = [
    "ScopedPage",
    "agent_in_scope",
    "alarm_in_scope",
    "command_in_scope",
    "confined_site",
    "current_sites",
    "dead_letter_in_scope",
    "device_in_scope",
    "in_scope",
    "not_found",
    "scoped_page",
    "sees",
    "sees_object",
    "selector_in_scope",
    "unscoped_only",
]

#: pages read at most to fill one page for a site-scoped key (then it gets a shorter page
#: whose ``next_cursor`` goes on)
MAX_PAGE_READS = 20

T = TypeVar("T")


def not_found(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail)


def in_scope(principal: Principal, device: DeviceRow) -> bool:
    return sees(principal.site, (device.site,))


def selector_in_scope(principal: Principal, selector: Mapping[str, Any]) -> bool:
    """A command group's or lighting strategy's selector: seen by a site-scoped key only when
    it is confined to that key's site."""
    return sees(principal.site, (selector.get("site"),))


def confined_site(principal: Principal, given: str | None) -> str | None:
    """The site something a caller creates is confined to (a webhook, an API key, a command
    group's or strategy's selector): a site-scoped key's own site (403 for another one); an
    unscoped key's choice."""
    if principal.site is None:
        return given
    if given not in (None, principal.site):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"this key is limited to site '{principal.site}'"
        )
    return principal.site


def unscoped_only(principal: Principal, what: str) -> None:
    """403 for a site-scoped key on something that spans every site (e.g. the audit log)."""
    if principal.site is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"{what} spans every site; this key is limited to site '{principal.site}'",
        )


async def current_sites(hub: Hub) -> Sites:
    """Which site each device and agent belongs to, read now."""
    return Sites.of(await hub.registry.list_devices())


async def device_in_scope(hub: Hub, principal: Principal, device_id: str) -> DeviceRow:
    """The device, or 404 when it does not exist or lies outside the caller's site."""
    device = await hub.registry.get_device(device_id)
    if device is None or not in_scope(principal, device):
        raise not_found(f"no device '{device_id}'")
    return device


async def agent_in_scope(hub: Hub, principal: Principal, agent_id: str) -> None:
    """404 when the caller is scoped to a site the agent has no device in."""
    if principal.site is None:
        return
    sites = await current_sites(hub)
    if not sees(principal.site, sites.agent_sites(agent_id)):
        raise not_found(f"no agent '{agent_id}'")


def sees_object(
    principal: Principal, sites: Sites, device_id: str | None, agent_id: str | None
) -> bool:
    """Something about a device (or, without one, about a whole agent): an alarm, a dead
    letter, a list's item."""
    return sees(principal.site, sites.sites_of(device_id, agent_id))


async def alarm_in_scope(hub: Hub, principal: Principal, alarm_id: str) -> AlarmRow:
    """The alarm, or 404 when it does not exist or lies outside the caller's site."""
    row = await hub.alarms.store.get(alarm_id)
    if row is None or (
        principal.site is not None
        and not sees_object(principal, await current_sites(hub), row.device_id, row.agent_id)
    ):
        raise not_found(f"no alarm '{alarm_id}'")
    return row


async def dead_letter_in_scope(hub: Hub, principal: Principal, dead_letter_id: int) -> None:
    """404 when the caller is scoped to a site the dead letter's agent has no device in (or
    its agent is not known); whether it exists is the route's to say."""
    if principal.site is None:
        return
    row: DeadLetterRow | None = await hub.dead_letters.get(dead_letter_id)
    if row is None or not sees_object(principal, await current_sites(hub), None, row.agent_id):
        raise not_found(f"no dead letter {dead_letter_id}")


async def command_in_scope(hub: Hub, principal: Principal, command_id: str) -> CommandRow:
    """The command, or 404 when it does not exist or its device lies outside the caller's
    site."""
    row = await hub.registry.get_command(command_id)
    if row is None:
        raise not_found(f"no command '{command_id}'")
    if principal.site is not None:
        device = await hub.registry.get_device(row.device_id)
        if device is None or not in_scope(principal, device):
            raise not_found(f"no command '{command_id}'")
    return row


@dataclass(frozen=True)
class ScopedPage(Generic[T]):
    items: list[T]
    next_cursor: str | None


async def scoped_page(
    fetch: Callable[[int, str | None], Awaitable[tuple[list[T], str | None]]],
    visible: Callable[[T], bool],
    limit: int,
    cursor: str | None,
) -> ScopedPage[T]:
    """One page of a keyset-paginated list with only the ``visible`` items: ``fetch(n,
    cursor)`` reads the store's next page of at most ``n`` (items, next cursor); pages are read on (each asked for what is still missing, so every cursor stays exact) until
    the page is full, the list ends, or ``MAX_PAGE_READS`` pages were read."""
    items: list[T] = []
    for _ in range(MAX_PAGE_READS):
        found, cursor = await fetch(limit - len(items), cursor)
        items.extend(item for item in found if visible(item))
        if cursor is None or len(items) >= limit:
            break
    return ScopedPage(items, cursor)
