"""A TCP proxy that can silently stop forwarding (a half-open link: no FIN, no RST)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["BlackholeProxy"]


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to ``target``; while ``frozen``, every byte in either
    direction on the connections that exist then is swallowed, as on a dead mobile link."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dead: set[asyncio.StreamWriter] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        """Swallow everything on the current connections from now on (they stay 'open')."""
        self.frozen = True
        self._dead |= self._writers

    def thaw(self) -> None:
        """New connections work again; the frozen ones stay dead until their peers give up."""
        self.frozen = False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        if self.frozen:
            self._dead |= {writer, up_writer}
        for src, dst, mine in ((reader, up_writer, writer), (up_reader, writer, up_writer)):
            task = asyncio.create_task(self._pump(src, dst, mine))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, own: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                if own in self._dead or dst in self._dead:
                    continue  # the black hole
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError):
            dst.close()
