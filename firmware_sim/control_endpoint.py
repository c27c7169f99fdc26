"""The control endpoint of a running site (:class:`ControlServer`) and its client (:func:`request`).

It listens on a UNIX socket path or on a TCP port of 127.0.0.1; a client sends one JSON line
and reads one JSON line back (the requests: :mod:`firmware_sim.control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from firmware_sim.sim_handles import ControlError, FaultRequest, RunningSim

__all__ = ["DEFAULT_CONTROL", "ControlServer", "Handler", "request"]

log = structlog.get_logger(__name__)

#: Where ``run-site`` listens and the client commands connect unless told otherwise.
DEFAULT_CONTROL = str(Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "firmware-sim.sock")  # noqa: S108 - a socket of the current user, like tmux's
_MAX_LINE = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


def _tcp_port(where: str) -> int | None:
    """``where`` as a TCP port of 127.0.0.1 (all digits), else None (a UNIX socket path)."""
    if where.isdigit():
        port = int(where)
        if not 0 <= port <= 65535:
            raise ControlError(f"control port {port} is not 0-65535")
        return port
    return None


class ControlServer:
    """The control endpoint of a running site: ``async with ControlServer(sims, where):``."""

    def __init__(self, sims: Mapping[str, RunningSim], where: str = DEFAULT_CONTROL) -> None:
        self.sims = sims
        self.where = where
        self.address = where
        self._server: asyncio.Server | None = None
        self._path: Path | None = None

    async def __aenter__(self) -> ControlServer:
        port = _tcp_port(self.where)
        if port is not None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", port, limit=_MAX_LINE
            )
            self.address = str(self._server.sockets[0].getsockname()[1])
        else:
            path = Path(self.where)
            if _is_socket(path):  # a stale socket of a runner that died: take it over
                with contextlib.suppress(OSError):
                    _reader, writer = await asyncio.open_unix_connection(path)
                    writer.close()
                    await writer.wait_closed()
                    raise ControlError(f"{path}: another firmware-sim run-site is listening there")
                _remove(path)
            self._server = await asyncio.start_unix_server(self._serve, path, limit=_MAX_LINE)
            self._path = path
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._path is not None:
            _remove(self._path)
            self._path = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                answer = {"ok": True, "result": self.handle(json.loads(line))}
            except (ControlError, ValueError, TypeError) as exc:
                answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
            log.warning("control connection failed", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def handle(self, message: Any) -> Any:
        """Do one request (a decoded JSON object) and return its result."""
        if not isinstance(message, dict):
            raise ControlError("a request is a JSON object")
        op = message.pop("op", None)
        if op == "status":
            return [sim.status() for sim in self.sims.values()]
        sim = self._sim(message.pop("sim", None))
        if op == "clear":
            sim.clear()
            log.info("faults cleared", sim=sim.name)
            return f"cleared every fault of {sim.name}"
        if op == "fault":
            try:
                req = FaultRequest.model_validate(message)
            except ValidationError as exc:
                raise ControlError(_first_issue(exc)) from exc
            done = sim.inject(req)
            log.info("fault injected", sim=sim.name, fault=req.fault, result=done)
            return done
        if op in ("set", "release"):
            device = message.pop("device", None)
            points = message.pop("points", None)
            if device is not None and not isinstance(device, str):
                raise ControlError("device is a string")
            if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
                raise ControlError("points is a list of strings")
            if op == "set":
                done = sim.set_points(device, points)
            else:
                done = sim.release_points(device, points)
            log.info("points " + op, sim=sim.name, device=device, result=done)
            return done
        raise ControlError(f"unknown op {op!r} (have: fault, clear, set, release, status)")

    def _sim(self, name: object) -> RunningSim:
        if not isinstance(name, str) or name not in self.sims:
            raise ControlError(f"no sim {name!r} (have: {', '.join(self.sims)})")
        return self.sims[name]


def _is_socket(path: Path) -> bool:
    return path.is_socket()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _first_issue(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


async def request(
    message: Mapping[str, Any], where: str = DEFAULT_CONTROL, *, timeout_s: float = 5.0
) -> Any:
    """Send one request to a running ``run-site`` and return its result; ControlError if the
    endpoint refuses it or cannot be reached."""
    port = _tcp_port(where)
    try:
        async with asyncio.timeout(timeout_s):
            if port is not None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=_MAX_LINE)
            else:
                reader, writer = await asyncio.open_unix_connection(where, limit=_MAX_LINE)
            try:
                writer.write(json.dumps(dict(message)).encode() + b"\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        raise ControlError(
            f"no firmware-sim run-site answering at {where} ({exc.__class__.__name__}: {exc})"
        ) from exc
    try:
        answer = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"{where}: not a control endpoint (answer {line[:60]!r})") from exc
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise ControlError(str(answer.get("error") if isinstance(answer, dict) else answer))
    return answer.get("result")
