"""The dependencies routes declare: the hub, and the caller with a permission."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cloud_hub.api.auth import Principal, require
from cloud_hub.hub import Hub

__all__ = ["Admin", "Commander", "HubDep", "Reader"]


def _hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(_hub)]
Reader = Annotated[Principal, Depends(require("read"))]
Commander = Annotated[Principal, Depends(require("command"))]
Admin = Annotated[Principal, Depends(require("admin"))]
