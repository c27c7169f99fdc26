"""Serve a register image over Modbus TCP with pymodbus's ``ModbusTcpServer``.

Everything runs in the caller's event loop (no threads)::

    async with ModbusSimServer(image, port=0) as server:   # 0: pick a free port
        print(server.endpoint)                             # modbus-tcp://127.0.0.1:40123

``stop()`` closes the listener and every client connection; ``start()`` again listens on the
same port (the one picked the first time), so clients can test their reconnection.

``server.faults`` injects faults into the answers to the next requests (no reply, delay,
exception, broken MBAP header, truncated or garbage answer, dropped connection, restart; see
:mod:`firmware_sim.faults`) and ``server.traffic`` logs the last requests and answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, cast

import structlog
from pymodbus.server import ModbusTcpServer

from firmware_sim.faults import Fault, FaultInjector, FaultyTcpServer, TrafficLog
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
        #: Faults for the next requests (see :mod:`firmware_sim.faults`).
        self.faults = FaultInjector()
        #: The last requests and answers (bounded).
        self.traffic = TrafficLog()
        self._restarting: asyncio.Task[None] | None = None

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
        server = FaultyTcpServer(
            devices,
            address=(self.host, self._port),
            faults=self.faults,
            traffic=self.traffic,
            restart=self._restart_for_fault,
        )
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
        restarting = self._restarting
        if restarting is not None and restarting is not asyncio.current_task():
            await asyncio.wait([restarting])  # let it finish: a half-done restart leaks
        server, self._server = self._server, None
        if server is None:
            return
        if isinstance(server, FaultyTcpServer):
            server.cancel_pending()
        listener = server.transport
        await _shutdown(server)
        if isinstance(listener, asyncio.Server):
            await listener.wait_closed()
        log.info("modbus server stopped", endpoint=self.endpoint)

    async def restart(self) -> None:
        """Stop and start again on the same port (clients lose their connections)."""
        await self.stop()
        await self.start()

    def _restart_for_fault(self, unit_id: int, function: int) -> None:
        if self._restarting is not None:
            return

        async def restart() -> None:
            try:
                await self.restart()
                self.faults.note_applied(Fault.restart, unit_id, function)
            except OSError as exc:  # the port was taken meanwhile: stay down, say why
                log.error("modbus server restart failed", endpoint=self.endpoint, error=str(exc))
            finally:
                self._restarting = None

        self._restarting = asyncio.get_running_loop().create_task(restart(), name="modbus restart")

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
