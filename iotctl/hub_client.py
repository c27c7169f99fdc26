"""A small client of the hub's HTTP API for ``iotctl hub`` (httpx, synchronous).

Errors reach the caller as one :class:`HubError` carrying the HTTP status (0: no answer) and
the problem+json ``detail`` the hub gave, so the CLI can print exactly why a call failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from device_profiles.wire import TERMINAL_COMMAND_STATUSES

__all__ = ["TERMINAL", "HubClient", "HubError"]

#: command statuses after which nothing changes any more
TERMINAL = TERMINAL_COMMAND_STATUSES


class HubError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {detail}" if status else detail)
        self.status = status
        self.detail = detail


class HubClient:
    def __init__(self, url: str, key: str | None, timeout_s: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)
        self.url = url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise HubError(0, f"cannot reach the hub at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            detail = response.text[:500]
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                detail = str(response.json().get("detail", detail))
            raise HubError(response.status_code, detail)
        return response.json() if response.content else None

    # -- resources --------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/devices")
        return result

    def device(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/devices/{device_id}")
        return result

    def agent(self, agent_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/agents/{agent_id}")
        return result

    def latest(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/devices/{device_id}/telemetry/latest")
        return result

    def send_command(self, device_id: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"name": name, "params": params}
        result: dict[str, Any] = self._call(
            "POST", f"/api/v1/devices/{device_id}/commands", json=body
        )
        return result

    def command(self, command_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/api/v1/commands/{command_id}")
        return result

    def wait_command(
        self,
        command_id: str,
        timeout_s: float,
        on_change: Callable[[dict[str, Any]], None] = lambda _: None,
    ) -> dict[str, Any]:
        """Poll a command until its status is final or ``timeout_s`` passed (the last seen)."""
        deadline = time.monotonic() + timeout_s
        seen = ""
        while True:
            row = self.command(command_id)
            if row["status"] != seen:
                seen = row["status"]
                on_change(row)
            if row["status"] in TERMINAL or time.monotonic() > deadline:
                return row
            time.sleep(0.2)

    def alarms(
        self, state: str | None = None, device_id: str | None = None
    ) -> list[dict[str, Any]]:
        params = {k: v for k, v in {"state": state, "device_id": device_id}.items() if v}
        page: dict[str, Any] = self._call("GET", "/api/v1/alarms", params=params)
        items: list[dict[str, Any]] = page["items"]
        return items

    def acknowledge(self, alarm_id: str, note: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/api/v1/alarms/{alarm_id}/acknowledge", json={"note": note}
        )
        return result

    def strategies(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/lighting/strategies")
        return result

    def preview(self, strategy_id: str, hours: int) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "GET", f"/api/v1/lighting/strategies/{strategy_id}/preview", params={"hours": hours}
        )
        return result
