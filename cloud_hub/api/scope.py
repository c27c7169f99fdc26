"""Object-level checks: a key scoped to a site (a technician's) sees and commands only the
devices of that site; anything else answers 404, as if it did not exist."""

from __future__ import annotations

from fastapi import HTTPException, status

from cloud_hub.api.auth import Principal
from cloud_hub.hub import Hub
from cloud_hub.registry import DeviceRow

__all__ = ["device_in_scope", "in_scope"]


def in_scope(principal: Principal, device: DeviceRow) -> bool:
    return principal.site is None or device.site == principal.site


async def device_in_scope(hub: Hub, principal: Principal, device_id: str) -> DeviceRow:
    """The device, or 404 when it does not exist or lies outside the caller's site."""
    device = await hub.registry.get_device(device_id)
    if device is None or not in_scope(principal, device):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device '{device_id}'")
    return device
