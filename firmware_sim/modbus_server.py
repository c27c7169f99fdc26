"""Serve a register image over Modbus TCP with pymodbus's ``ModbusTcpServer``.

Everything runs in the caller's event loop (no threads)::

    async with ModbusSimServer(image, port=0) as server:   # 0: pick a free port
        print(server.endpoint)                             # modbus-tcp://127.0.0.1:40123

``stop()`` closes the listener and every client connection; ``start()`` again listens on the
same port (the one picked the first time), so clients can test their reconnection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, cast

import structlog
from pymodbus.server import ModbusTcpServer

from firmware_sim.register_image import RegisterImage

__all__ = ["ModbusSimServer"]

log = structlog.get_logger(__name__)


class ModbusSimServer:
    """A Modbus TCP server answering for ``image`` as each of ``unit_ids``."""

    def __init__(
        self,
        image: RegisterImage,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        unit_ids: Sequence[int] = (1,),
    ) -> None:
        if not unit_ids:
            raise ValueError("serve at least one unit id")
        self.image = image
        self.host = host
        self.unit_ids = tuple(unit_ids)
        self._port = port
        self._server: ModbusTcpServer | None = None

    @property
    def port(self) -> int:
        """The TCP port: the one asked for, or the one picked once started with port 0."""
        return self._port

    @property
    def endpoint(self) -> str:
        return f"modbus-tcp://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen and serve (returns once listening). No-op when already running."""
        if self._server is not None:
            return
        devices = [self.image.sim_device(unit) for unit in self.unit_ids]
        server = ModbusTcpServer(devices, address=(self.host, self._port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus: "Could not start listen, please check address."
            await _shutdown(server)
            raise OSError(f"cannot listen on {self.host}:{self._port}: {exc}") from exc
        listener = server.transport
        if isinstance(listener, asyncio.Server) and listener.sockets:
            self._port = int(listener.sockets[0].getsockname()[1])
        self._server = server
        log.info("modbus server listening", endpoint=self.endpoint, units=self.unit_ids)

    async def stop(self) -> None:
        """Close the listener and all client connections. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        listener = server.transport
        await _shutdown(server)
        if isinstance(listener, asyncio.Server):
            await listener.wait_closed()
        log.info("modbus server stopped", endpoint=self.endpoint)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def _shutdown(server: ModbusTcpServer) -> None:
    # pymodbus 3.16 leaves ModbusBaseServer.shutdown unannotated (mypy: no-untyped-call)
    shutdown = cast(Callable[[], Awaitable[None]], server.shutdown)
    await shutdown()
