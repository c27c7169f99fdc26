"""CoAP driver on aiocoap: GET (and Observe) to read, PUT or POST to write, block-wise for free.

A point lives in a resource (``coap: {path: /cover, key: open}``); the points of one resource
are read with one GET and picked out of its body: a plain value (``text/plain``: a number,
``true``/``false`` or a string) or a key of a JSON object (``application/json``). CBOR
(``application/cbor``) is refused with :class:`ProtocolError` as long as no CBOR library is
installed.

Observe (RFC 7641): a point whose location says ``observe: true`` (and ``settings.observe``)
is read by registering an observation on its resource; notifications the device pushes are
cached, and ``read`` answers from the cache without a request while the latest representation
is fresh (its Max-Age, 60 s by default, has not run out). When the observation ends (the device
said so, answered an error, stopped answering or was unreachable) or goes stale (e.g. the
device rebooted and forgot its observers), the next ``read`` registers again, which also
fetches the current value. A write to a resource drops its observation for the same reason.

Errors: no answer after the retransmissions (or a separate response that never came) is
:class:`DriverTimeout`; a 4.xx/5.xx answer is :class:`CoapDeviceException` (a
:class:`DeviceException` whose ``code`` is the CoAP code byte, 132 for 4.04, and ``function``
the method code, 1 GET, 2 POST, 3 PUT); a body that holds no value for the point is
:class:`ProtocolError`; an unreachable host (ICMP errors, name resolution) is
:class:`ConnectError`. aiocoap's exceptions are translated here and never leak.

One aiocoap client context per driver: created by ``connect`` (or the first request), shut
down by ``close``. Observations are read by one task each, owned and cancelled by the driver.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.error as coap_error
import structlog
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import TransportTuning

from device_profiles import DeviceProfile, Point, Value, is_finite
from drivers.base import Driver
from drivers.coap.settings import ACK_RANDOM_FACTOR, CoapSettings
from drivers.errors import (
    ConnectError,
    DeviceException,
    DriverError,
    DriverTimeout,
    EncodeError,
    ProtocolError,
)

__all__ = [
    "CONTENT_FORMAT_CBOR",
    "CONTENT_FORMAT_JSON",
    "CONTENT_FORMAT_TEXT",
    "CoapDeviceException",
    "CoapDriver",
    "coap_code_name",
    "decode_payload",
    "encode_payload",
]

log = structlog.get_logger(__name__)

CONTENT_FORMAT_TEXT = 0  # text/plain; charset=utf-8
CONTENT_FORMAT_JSON = 50  # application/json
CONTENT_FORMAT_CBOR = 60  # application/cbor
DEFAULT_MAX_AGE_S = 60  # RFC 7252, 5.10.5
_METHOD_NAMES = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_MAX_TEXT_NUMBER = 64  # characters; longer "numbers" are garbage, not values


def coap_code_name(code: int) -> str:
    """``4.04 Not Found`` for 132; ``4.31`` for a code without a name."""
    return str(Code(code)).removesuffix(" (Unknown)")


class CoapDeviceException(DeviceException):
    """The device answered with a CoAP error (4.xx client error, 5.xx server error).

    ``code`` is the code byte (class x 32 + detail: 132 = 4.04, 163 = 5.03), ``function`` the
    request's method code (1 GET, 2 POST, 3 PUT, 4 DELETE), ``path`` the resource.
    """

    def __init__(self, code: int, function: int, detail: str = "", *, path: str = "") -> None:
        super().__init__(code, function, detail)
        self.path = path
        method = _METHOD_NAMES.get(function, f"method {function}")
        message = f"{method} {path} answered {self.name}"
        self.args = (f"{message}: {detail}" if detail else message,)

    @property
    def name(self) -> str:
        """Readable code, e.g. ``4.04 Not Found``."""
        return coap_code_name(self.code)


# -- payloads ----------------------------------------------------------------------------------


def decode_payload(
    payload: bytes, content_format: int | None, points: Mapping[str, Point]
) -> dict[str, Value]:
    """The raw values of ``points`` (all of one resource) in a response body.

    ``content_format`` None (no option) is read as JSON when the points have keys, else as
    text. Raises :class:`ProtocolError` for anything that is not a value of each point's type.
    """
    keyed = any(p.coap.key is not None for p in points.values())
    if content_format is None:
        content_format = CONTENT_FORMAT_JSON if keyed else CONTENT_FORMAT_TEXT
    if content_format == CONTENT_FORMAT_TEXT:
        if keyed:
            raise ProtocolError("a text/plain body has no keys; the profile expects JSON or CBOR")
        text = _text(payload)
        return {name: _from_text(point, text) for name, point in points.items()}
    if content_format == CONTENT_FORMAT_JSON:
        document = _json(payload)
        return {
            name: _from_json(point, _member(document, point.coap.key))
            for name, point in points.items()
        }
    if content_format == CONTENT_FORMAT_CBOR:
        raise ProtocolError("application/cbor body, but no CBOR decoder is installed")
    raise ProtocolError(f"unsupported content format {content_format}")


def encode_payload(point: Point, raw: Value) -> tuple[bytes, int]:
    """Body and content format that write ``raw`` to ``point``'s resource.

    ``{key: raw}`` as JSON for a keyed point, the plain value as text otherwise.
    :class:`EncodeError` if ``raw`` does not fit the point's type.
    """
    value = _checked_raw(point, raw)
    key = point.coap.key
    if key is not None:
        return json.dumps({key: value}, allow_nan=False).encode(), CONTENT_FORMAT_JSON
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return text.encode(), CONTENT_FORMAT_TEXT


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"text/plain body is not UTF-8: {payload[:32]!r}") from exc


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON body: {payload[:32]!r}") from exc


def _member(document: Any, key: str | None) -> Any:
    if key is None:
        return document
    if not isinstance(document, dict):
        raise ProtocolError(f"JSON body is not an object, cannot pick '{key}'")
    if key not in document:
        raise ProtocolError(f"JSON body has no '{key}' (has {sorted(document)[:8]})")
    return document[key]


def _int_range(data_type: str) -> tuple[int, int]:
    bits = int(data_type.removeprefix("u").removeprefix("int"))
    if data_type.startswith("u"):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _from_text(point: Point, text: str) -> Value:
    if point.type == "string":
        return text
    word = text.strip()
    if point.type == "bool":
        lowered = word.lower()
        if lowered in ("true", "1", "on"):
            return True
        if lowered in ("false", "0", "off"):
            return False
        raise ProtocolError(f"expected true or false, got {word[:32]!r}")
    if len(word) > _MAX_TEXT_NUMBER or not _NUMBER.fullmatch(word):
        raise ProtocolError(f"expected a number, got {word[:32]!r}")
    if point.type.startswith(("int", "uint")):
        number: int | float = int(word) if _INTEGER.fullmatch(word) else float(word)
    else:
        number = float(word)
    return _from_json(point, number)


def _from_json(point: Point, value: Any) -> Value:
    t = point.type
    if t == "bool":
        if isinstance(value, bool):
            return value
        raise ProtocolError(f"expected true or false, got {_short(value)}")
    if t == "string":
        if isinstance(value, str):
            return value
        raise ProtocolError(f"expected a string, got {_short(value)}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"expected a number, got {_short(value)}")
    if not is_finite(value):
        raise ProtocolError(f"expected a finite number, got {value!r}")
    if t.startswith("float"):
        try:
            number = float(value)
        except OverflowError as exc:  # an integer beyond the float range
            raise ProtocolError(f"{_short(value)} does not fit a {t}") from exc
        if t == "float32" and abs(number) > 3.4028234663852886e38:
            raise ProtocolError(f"{value!r} does not fit a float32")
        return number
    if isinstance(value, float):
        if not value.is_integer():
            raise ProtocolError(f"expected an integer for a {t}, got {value!r}")
        value = int(value)
    low, high = _int_range(t)
    if not low <= value <= high:
        raise ProtocolError(f"{_short(value)} does not fit a {t}")
    return int(value)


def _checked_raw(point: Point, raw: Value) -> Value:
    t = point.type
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        raise EncodeError(f"a bool point takes true or false, not {raw!r}")
    if t == "string":
        if isinstance(raw, str):
            return raw
        raise EncodeError(f"a string point takes a string, not {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise EncodeError(f"a {t} point takes a number, not {raw!r}")
    if not is_finite(raw):
        raise EncodeError(f"{raw!r} cannot be written: not a finite number")
    if t.startswith("float"):
        try:
            return float(raw)
        except OverflowError as exc:  # an integer beyond the float range
            raise EncodeError(f"{_short(raw)} does not fit a {t}") from exc
    if isinstance(raw, float):
        if not raw.is_integer():
            raise EncodeError(f"a {t} point takes an integer, not {raw!r}")
        raw = int(raw)
    low, high = _int_range(t)
    if not low <= raw <= high:
        raise EncodeError(f"{_short(raw)} does not fit a {t}")
    return raw


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- the driver --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Observation:
    """An observation of one resource and the latest representation it delivered."""

    path: str
    request: Any  # aiocoap's Request: .observation yields the notifications
    latest: Any  # aiocoap.Message
    fresh_until: float
    alive: bool = True
    task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        self.alive = False
        if self.task is not None:
            self.task.cancel()
        observation = self.request.observation
        if observation is not None and not observation.cancelled:
            observation.cancel()  # the next notification is answered with RST


class CoapDriver(Driver):
    """A device reached over CoAP (UDP)."""

    def __init__(self, profile: DeviceProfile, settings: CoapSettings) -> None:
        super().__init__(profile)
        self.settings = settings
        self._context: Any = None  # aiocoap.Context while connected
        self._connecting = asyncio.Lock()
        self._observations: dict[str, _Observation] = {}
        self._notifications: dict[str, int] = {}  # path -> notifications received
        self._pushed_latest: dict[str, Any] = {}  # path -> latest notification (aiocoap.Message)
        self._registering: dict[str, asyncio.Lock] = {}  # path -> one registration at a time
        self._pushed = asyncio.Event()  # set (and replaced) on every notification
        tuning = TransportTuning()
        tuning.ACK_TIMEOUT = settings.timeout_s
        tuning.ACK_RANDOM_FACTOR = ACK_RANDOM_FACTOR
        tuning.MAX_RETRANSMIT = settings.retries
        self._tuning = tuning

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def connected(self) -> bool:
        """True while the client context exists (CoAP itself has no connection)."""
        return self._context is not None

    async def _connect(self) -> None:
        """Create the client context (binds a local UDP port; the device is not contacted)."""
        await self._client()

    async def _close(self) -> None:
        context, self._context = self._context, None
        observations = list(self._observations.values())
        self._observations.clear()
        for obs in observations:
            obs.stop()
        tasks = [obs.task for obs in observations if obs.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        if context is not None:
            await context.shutdown()
            log.debug("coap closed", endpoint=self.endpoint)

    async def _read(self, names: Sequence[str]) -> dict[str, Value]:
        wanted = list(dict.fromkeys(names))
        by_path: dict[str, dict[str, Point]] = {}
        for name in wanted:
            point = self.point(name)
            by_path.setdefault(point.coap.path, {})[name] = point
        raw: dict[str, Value] = {}
        for path, points in by_path.items():
            if self._observes(points.values()):
                response = await self._observed(path)
            else:
                response = await self._get(path)
            try:
                raw.update(self._decode(path, response, points))
            except ProtocolError:
                self._forget(path)  # never serve a malformed representation from the cache
                raise
        return {name: raw[name] for name in wanted}

    async def _write(self, name: str, raw: Value) -> None:
        point = self.writable_point(name)
        path = point.coap.path
        payload, content_format = encode_payload(point, raw)
        method = Code.POST if self.settings.write_method == "POST" else Code.PUT
        response, _ = await self._request(
            method, path, payload=payload, content_format=content_format
        )
        self._check(response, method, path)
        self._forget(path)  # the next read registers again and sees the written value
        log.debug("coap write", endpoint=self.endpoint, point=name, raw=raw)

    # -- observation, for callers that want pushes ---------------------------------------

    def notifications(self, name: str) -> int:
        """How many Observe notifications arrived for point ``name``'s resource so far."""
        return self._notifications.get(self.point(name).coap.path, 0)

    def observing(self, name: str) -> bool:
        """True while an observation of point ``name``'s resource is alive and fresh."""
        obs = self._observations.get(self.point(name).coap.path)
        return obs is not None and obs.alive and asyncio.get_running_loop().time() < obs.fresh_until

    def freshness_s(self, name: str) -> float:
        """Seconds the observed representation of ``name``'s resource stays fresh (0 if none):
        after that, ``read`` registers the observation again."""
        obs = self._observations.get(self.point(name).coap.path)
        if obs is None or not obs.alive:
            return 0.0
        return max(0.0, obs.fresh_until - asyncio.get_running_loop().time())

    async def wait_notification(self, name: str, *, after: int, timeout_s: float) -> Value:
        """Wait until more than ``after`` notifications arrived for ``name``'s resource (see
        :meth:`notifications`), and return the raw value the latest one carries.

        :class:`DriverTimeout` if none arrives within ``timeout_s``.
        """
        point = self.point(name)
        path = point.coap.path
        try:
            async with asyncio.timeout(timeout_s):
                while self._notifications.get(path, 0) <= after:
                    await self._pushed.wait()
        except TimeoutError as exc:
            raise DriverTimeout(
                f"{self.endpoint}{path}: no notification within {timeout_s}s"
            ) from exc
        return self._decode(path, self._pushed_latest[path], {name: point})[name]

    # -- internals -------------------------------------------------------------------------

    def _observes(self, points: Iterable[Point]) -> bool:
        return self.settings.observe and any(p.coap.observe for p in points)

    def _forget(self, path: str) -> None:
        obs = self._observations.pop(path, None)
        if obs is not None:
            obs.stop()

    async def _client(self) -> Any:
        async with self._connecting:
            if self._context is None:
                try:
                    self._context = await aiocoap.Context.create_client_context(transports=["udp6"])
                except OSError as exc:
                    raise ConnectError(f"{self.endpoint}: cannot open a UDP socket: {exc}") from exc
                log.debug("coap client ready", endpoint=self.endpoint)
            return self._context

    async def _get(self, path: str) -> Any:
        response, _ = await self._request(Code.GET, path)
        self._check(response, Code.GET, path)
        return response

    async def _observed(self, path: str) -> Any:
        """The latest representation of ``path``: cached while its observation is fresh,
        else from a new registration (which also starts receiving notifications)."""
        async with self._registering.setdefault(path, asyncio.Lock()):
            return await self._observed_locked(path)

    async def _observed_locked(self, path: str) -> Any:
        loop = asyncio.get_running_loop()
        obs = self._observations.get(path)
        if obs is not None and obs.alive and loop.time() < obs.fresh_until:
            return obs.latest
        if obs is not None:
            del self._observations[path]
            obs.stop()
            log.debug("coap observation renewed", endpoint=self.endpoint, path=path)
        context = await self._client()
        response, request = await self._request(Code.GET, path, observe=True)
        try:
            self._check(response, Code.GET, path)
        except CoapDeviceException:
            _abandon(request)
            raise
        observation = request.observation
        if observation is None or observation.cancelled or response.opt.observe is None:
            return response  # the device does not offer Observe here: poll
        if self._context is None or self._context is not context:
            _abandon(request)  # closed while registering: keep nothing running
            return response
        obs = _Observation(
            path=path, request=request, latest=response, fresh_until=_fresh_until(loop, response)
        )
        obs.task = asyncio.create_task(
            self._listen(obs), name=f"coap observe {self.endpoint}{path}"
        )
        self._observations[path] = obs
        log.debug("coap observing", endpoint=self.endpoint, path=path)
        return response

    async def _listen(self, obs: _Observation) -> None:
        """Cache the notifications of one observation until it ends."""
        loop = asyncio.get_running_loop()
        try:
            async for notification in obs.request.observation:
                if not notification.code.is_successful():
                    log.info(
                        "coap observation ended by the device",
                        endpoint=self.endpoint,
                        path=obs.path,
                        code=str(notification.code),
                    )
                    break
                obs.latest = self._pushed_latest[obs.path] = notification
                obs.fresh_until = _fresh_until(loop, notification)
                self._notifications[obs.path] = self._notifications.get(obs.path, 0) + 1
                pushed, self._pushed = self._pushed, asyncio.Event()
                pushed.set()
        except coap_error.Error as exc:
            log.info("coap observation lost", endpoint=self.endpoint, path=obs.path, error=str(exc))
        finally:
            obs.alive = False

    async def _request(
        self,
        method: Code,
        path: str,
        *,
        payload: bytes = b"",
        content_format: int | None = None,
        observe: bool = False,
    ) -> tuple[Any, Any]:
        """Send one request (block-wise as needed) and return (response, request)."""
        context = await self._client()
        s = self.settings
        message = aiocoap.Message(
            code=method,
            uri=f"{s.endpoint}{path}",
            payload=payload,
            transport_tuning=self._tuning,
        )
        if content_format is not None:
            message.opt.content_format = content_format
        if observe:
            message.opt.observe = 0
        if method == Code.GET and s.block_size < 1024:
            message.opt.block2 = (0, False, s.block_size_exponent)  # early negotiation
        where = f"{_METHOD_NAMES.get(int(method), str(method))} {s.endpoint}{path}"
        request: Any = None
        try:
            request = context.request(message)
            async with asyncio.timeout(s.max_wait_s):
                response = await request.response
        except TimeoutError as exc:
            _abandon(request)
            raise DriverTimeout(
                f"{where}: no answer within {s.max_wait_s:.2f}s ({s.retries} retries)"
            ) from exc
        except coap_error.Error as exc:
            _abandon(request)
            raise _translate(exc, where) from exc
        except OSError as exc:
            _abandon(request)
            raise ConnectError(f"{where}: {exc}") from exc
        return response, request

    def _check(self, response: Any, method: Code, path: str) -> None:
        code = response.code
        if not code.is_successful():
            detail = response.payload[:80].decode("utf-8", errors="replace")
            raise CoapDeviceException(int(code), int(method), detail, path=path)

    def _decode(self, path: str, response: Any, points: Mapping[str, Point]) -> dict[str, Value]:
        try:
            return decode_payload(response.payload, response.opt.content_format, points)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.endpoint}{path}: {exc}") from exc


def _fresh_until(loop: asyncio.AbstractEventLoop, response: Any) -> float:
    max_age = response.opt.max_age
    return loop.time() + (DEFAULT_MAX_AGE_S if max_age is None else int(max_age))


def _abandon(request: Any) -> None:
    """Stop caring for a failed request's observation (if any)."""
    observation = getattr(request, "observation", None)
    if observation is not None and not observation.cancelled:
        observation.cancel()


def _translate(exc: Exception, where: str) -> DriverError:
    """The driver error for an aiocoap exception."""
    if isinstance(exc, coap_error.TimeoutError):
        return DriverTimeout(f"{where}: no answer ({exc})")
    if isinstance(exc, coap_error.LibraryShutdown):
        return ConnectError(f"{where}: the driver was closed")
    if isinstance(exc, coap_error.NetworkError):
        cause = exc.__cause__
        reason = (
            f"{exc} ({cause})" if cause is not None and str(cause) not in str(exc) else str(exc)
        )
        return ConnectError(f"{where}: unreachable: {reason}")
    return ProtocolError(f"{where}: {type(exc).__name__}: {exc}")
