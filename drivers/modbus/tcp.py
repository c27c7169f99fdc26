"""Modbus TCP driver on pymodbus's ``AsyncModbusTcpClient``.

Reads are planned into coalesced blocks (:mod:`drivers.modbus.plan`), one request per block,
and the points are decoded from the blocks (:mod:`drivers.modbus.codec`); which requests a read
or a write sends is shared with RTU (:mod:`drivers.modbus.requests`). This module runs them on
the connection.

One lock serialises the requests of a driver, so a read's blocks and a concurrent write never
interleave. pymodbus's own background reconnection is switched off: after a broken connection
(or a timeout, after which the stream may carry a stale answer) the client is dropped and the
next call connects afresh. pymodbus exceptions are translated here and never leak.

pymodbus waits on when the bytes received do not form a valid answer (a broken MBAP header,
a truncated frame, garbage); the driver watches what arrives (``trace_packet``) and reports
such an answer as :class:`~drivers.errors.ProtocolError` at the timeout, not as
:class:`~drivers.errors.DriverTimeout`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog
from pymodbus import ExceptionResponse, ModbusException
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from device_profiles import DeviceProfile, Value
from drivers.base import Driver
from drivers.errors import (
    ConnectError,
    DeviceException,
    DriverTimeout,
    ProtocolError,
)
from drivers.modbus.plan import PlanCache
from drivers.modbus.requests import ModbusWrite, Request, Send, read_points
from drivers.settings import ModbusTcpSettings

__all__ = ["ModbusTcpDriver"]

log = structlog.get_logger(__name__)

# pymodbus raises ModbusIOException for both "no answer" and "wrong answer"; only the text
# tells them apart (pymodbus/transaction/transaction.py, checked against 3.16).
_NO_RESPONSE = "No response received"


class ModbusTcpDriver(Driver):
    """A device reached over Modbus TCP."""

    def __init__(self, profile: DeviceProfile, settings: ModbusTcpSettings) -> None:
        super().__init__(profile)
        self.settings = settings
        self._client: AsyncModbusTcpClient | None = None
        self._lost = asyncio.Event()  # set when the current client's connection drops
        self._lock = asyncio.Lock()
        self._plans = PlanCache(max_gap=settings.max_gap)
        self._rx = b""  # the receive buffer as last seen, during the request in flight

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def connected(self) -> bool:
        """True while a TCP connection is open (it may still turn out broken)."""
        return self._client is not None and self._client.connected

    async def _connect(self) -> None:
        async with self._lock:
            await self._connected_client()

    async def _close(self) -> None:
        self._drop()

    async def _read(self, names: Sequence[str]) -> dict[str, Value]:
        points = {name: self.point(name) for name in dict.fromkeys(names)}
        if not points:
            return {}
        async with self._lock:
            send = self._sender(await self._connected_client())
            return await read_points(
                send, self.settings.unit_id, points, self._plans.blocks(points)
            )

    async def _write(self, name: str, raw: Value) -> None:
        write = ModbusWrite.encode(name, self.writable_point(name), raw)  # check early
        async with self._lock:
            await write.run(self._sender(await self._connected_client()), self.settings.unit_id)
        log.debug("modbus write", endpoint=self.endpoint, point=name, raw=raw)

    # -- internals ----------------------------------------------------------------------

    async def _connected_client(self) -> AsyncModbusTcpClient:
        """The open client, connecting (again) if there is none or its connection broke."""
        if self._client is not None and self._client.connected:
            return self._client
        self._drop()
        s = self.settings
        lost = asyncio.Event()

        def on_connection(connected: bool) -> None:
            if not connected:
                lost.set()

        client = AsyncModbusTcpClient(
            s.host,
            port=s.port,
            name=self.endpoint,
            timeout=s.timeout_s,
            retries=s.retries,
            reconnect_delay=0,  # no background reconnect task: we reconnect on the next call
            trace_connect=on_connection,
            trace_packet=self._on_packet,
        )
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise ConnectError(f"cannot connect to {self.endpoint}: {exc}") from exc
        except Exception:
            client.close()  # the driver boundary translates it; never leave a socket behind
            raise
        if not ok:
            client.close()
            raise ConnectError(
                f"cannot connect to {self.endpoint} (refused, unreachable or no answer "
                f"within {s.timeout_s}s)"
            )
        self._client, self._lost = client, lost
        log.debug("modbus connected", endpoint=self.endpoint)
        return client

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx = data
        return data

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._lost.set()  # a request still waiting on this client fails at once
        if client is not None:
            client.close()

    def _sender(self, client: AsyncModbusTcpClient) -> Send:
        """Requests run on ``client`` (see :meth:`_execute`)."""
        return lambda function, request: self._execute(client, function, request)

    async def _execute(
        self,
        client: AsyncModbusTcpClient,
        function: int,
        request: Request,
    ) -> ModbusPDU:
        """Run one request on ``client``; translate every failure into a DriverError."""
        where = f"{self.endpoint} function {function}"
        self._rx = b""
        try:
            response = await self._unless_lost(lambda: request(client))
        except _ConnectionLost as exc:
            self._drop()
            raise ConnectError(f"{where}: connection lost") from exc
        except ConnectionException as exc:
            self._drop()
            raise ConnectError(f"{where}: not connected ({exc})") from exc
        except ModbusIOException as exc:
            self._drop()
            if _NO_RESPONSE in str(exc) and self._rx:
                raise ProtocolError(
                    f"{where}: no valid answer within {self.settings.timeout_s}s, "
                    f"got {self._rx[:32].hex(' ')}"
                ) from exc
            if _NO_RESPONSE in str(exc):
                raise DriverTimeout(
                    f"{where}: no answer within {self.settings.timeout_s}s "
                    f"({self.settings.retries} retries)"
                ) from exc
            raise ProtocolError(f"{where}: {exc}") from exc
        except ModbusException as exc:
            self._drop()
            raise ProtocolError(f"{where}: {exc}") from exc
        except OSError as exc:
            self._drop()
            raise ConnectError(f"{where}: {exc}") from exc
        except TimeoutError as exc:
            self._drop()
            raise DriverTimeout(f"{where}: no answer") from exc
        except (asyncio.CancelledError, Exception):
            # an answer may still arrive; never let it meet the next request (the driver
            # boundary translates an unexpected exception)
            self._drop()
            raise
        if isinstance(response, ExceptionResponse):
            raise DeviceException(response.exception_code, response.function_code & 0x7F)
        if response.isError() or response.function_code != function:
            self._drop()
            raise ProtocolError(f"{where}: unexpected answer {response}")
        return response

    async def _unless_lost(self, request: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        """Await the request, or raise _ConnectionLost as soon as the connection drops.

        pymodbus does not fail a pending request when the peer closes the connection; it
        waits out the timeout on every retry. Racing the request against the disconnect
        notice (``trace_connect``) reports a restarted or vanished device at once.
        """
        lost = self._lost
        if lost.is_set():
            raise _ConnectionLost
        pending = asyncio.ensure_future(request())
        watcher = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({pending, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not pending.done():
                # close first: an answer on its way must not reach pymodbus after the request
                # is gone ("received pdu without a corresponding request"), nor the next one
                self._drop()
                pending.cancel()
                await asyncio.wait({pending})
        if pending.cancelled():
            raise _ConnectionLost
        return pending.result()


class _ConnectionLost(Exception):
    """The TCP connection closed while a request was pending (translated to ConnectError)."""
