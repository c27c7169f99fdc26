"""A smart manhole cover sensor (profile ``manhole_cover``) served over CoAP by aiocoap.

::

    async with run_manhole_sensor(seed=1, port=0, tick_s=1.0) as sim:
        sim.host, sim.port                # coap://127.0.0.1:PORT (port 0: a free UDP port)
        sim.values                        # {"tilt": 0.3, "water_level": 31.2, ...}
        sim.lift_cover()                  # tilt jumps, /cover says open; observers notified
        sim.writes                        # what clients PUT or POSTed
        sim.faults.drop = True            # ... delay_s, unavailable, malformed; faults.clear()
        await sim.restart()               # stop and serve again on the same port

Resources (all observable except ``/log``; Max-Age ``max_age_s`` on every answer):

* ``/tilt``, ``/water-level``, ``/battery`` - text/plain numbers (°, cm, %), one decimal;
* ``/cover`` - application/json ``{"open": bool, "tilt": float, "temperature": float}``;
* ``/config/report-interval`` - text/plain seconds, writable with PUT or POST (10-3600; a
  plain number, a JSON number or ``{"report_interval": n}``), 4.00 for anything else;
* ``/log`` - the sensor's event log as text, over 2 KiB, so that a GET needs block-wise transfer;
* ``/.well-known/core`` - the resource list in link format (aiocoap's ``WKCResource``).

Physics (:class:`ManholeCoverModel`) is deterministic for a given ``seed``: one
``random.Random(seed)`` drives every draw and time is counted in ticks, not read from a clock.
Battery drains slowly, water rises during rain events and drains back to its base level, the
chamber temperature wanders, and the tilt jumps when the cover is lifted. After every change
the server notifies the observers of each resource whose representation changed.

Fault injection (:class:`CoapFaults`) acts on the server: ``drop`` swallows incoming requests
(no ACK, no answer), ``delay_s`` answers late (aiocoap sends an empty ACK first, then a separate
response), ``unavailable`` answers 5.03, ``malformed`` sends bytes that parse as no value.
Incoming requests (:attr:`ManholeSensorSim.requests`, dropped ones included), answers and
notifications sent (:attr:`ManholeSensorSim.sent`) and writes (:attr:`ManholeSensorSim.writes`)
are logged.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import aiocoap
import structlog
from aiocoap import resource
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat

from device_profiles import CommandRejected, DeviceProfile, Value, load_builtin_profile
from firmware_sim.ticking import ticking

__all__ = [
    "CoapFault",
    "CoapFaults",
    "CoapRequestRecord",
    "CoapSentRecord",
    "CoapWriteRecord",
    "ManholeCoverModel",
    "ManholeSensorSim",
    "run_manhole_sensor",
]

log = structlog.get_logger(__name__)

TEXT = ContentFormat.TEXT
JSON = ContentFormat.JSON
#: the writable point of ``/config/report-interval``; its min and max bound a write
_INTERVAL_POINT = load_builtin_profile("manhole_cover").points["report_interval"]
_INTERVAL_RANGE = f"{_INTERVAL_POINT.min:g}-{_INTERVAL_POINT.max:g}"
_LOG_LINES_KEPT = 200
_LOG_SEED_LINES = 48  # ~3 KiB of boot log, so /log always needs block-wise transfer
MALFORMED_PAYLOAD = b"\xff\xfe{not a value"
_KEPT = 10_000  # request and answer records kept
#: The faults of :class:`CoapFaults`, by name.
CoapFault = Literal["drop", "delay", "unavailable", "malformed"]
_SETTABLE = ("tilt", "water_level", "battery", "temperature", "open", "report_interval")


@dataclass(slots=True)
class CoapFaults:
    """Faults the server injects until :meth:`clear` (all off by default), or, injected with
    a count (:meth:`inject`), for that many requests (answers, for ``delay``, ``unavailable``
    and ``malformed``)."""

    #: Swallow incoming requests: no ACK, no answer (the client times out).
    drop: bool = False
    #: Answer this many seconds late (a separate response after an empty ACK).
    delay_s: float = 0.0
    #: Answer every request with 5.03 Service Unavailable.
    unavailable: bool = False
    #: Answer with a payload that is no value in any content format.
    malformed: bool = False
    #: The faults in force for a number of requests only: name -> requests left.
    counted: dict[CoapFault, int] = field(default_factory=dict)

    def inject(self, fault: CoapFault, count: int | None = None, *, delay_s: float = 1.0) -> None:
        """Switch ``fault`` on for the next ``count`` requests (None: until cleared)."""
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None, got {count}")
        if fault == "delay":
            self.delay_s = delay_s
        else:
            setattr(self, fault, True)
        if count is None:
            self.counted.pop(fault, None)
        else:
            self.counted[fault] = count

    def active(self, fault: CoapFault) -> bool:
        """Whether ``fault`` is in force (without counting a request off it)."""
        return self.delay_s > 0 if fault == "delay" else bool(getattr(self, fault))

    def take(self, fault: CoapFault) -> bool:
        """Whether ``fault`` applies to the request arriving now, counting it off."""
        if not self.active(fault):
            return False
        left = self.counted.get(fault)
        if left is not None:
            if left <= 1:
                del self.counted[fault]
                if fault == "delay":
                    self.delay_s = 0.0
                else:
                    setattr(self, fault, False)
            else:
                self.counted[fault] = left - 1
        return True

    def clear(self) -> None:
        self.drop = False
        self.delay_s = 0.0
        self.unavailable = False
        self.malformed = False
        self.counted.clear()


@dataclass(frozen=True, slots=True)
class CoapRequestRecord:
    """A request as it arrived (block-wise continuations count, each is a request)."""

    ts: float
    method: str
    path: str
    observe: int | None
    dropped: bool


@dataclass(frozen=True, slots=True)
class CoapSentRecord:
    """An answer or an Observe notification the server rendered."""

    ts: float
    path: str
    code: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class CoapWriteRecord:
    """A PUT or POST to a writable resource; ``value`` is None when it was refused."""

    ts: float
    path: str
    method: str
    payload: bytes
    value: Value | None


class ManholeCoverModel:
    """The physics of a manhole cover sensor, in ticks; deterministic for a ``seed``."""

    BASE_WATER_CM = 30.0
    BASE_TEMPERATURE_C = 12.0

    def __init__(self, *, seed: int | None = None) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - physics noise, not cryptography
        self.ticks = 0
        self.open = False
        self.tilt = round(0.3 + self.rng.gauss(0.0, 0.05), 1)
        self.water_level = round(self.BASE_WATER_CM + self.rng.uniform(-5.0, 5.0), 1)
        self.battery = round(self.rng.uniform(85.0, 99.0), 1)
        self.temperature = round(self.rng.uniform(9.0, 14.0), 1)
        self.report_interval = 60
        self.rain_ticks = 0
        self.rain_cm_per_tick = 0.0
        self._battery_exact = self.battery
        self._lifted_tilt = 0.0
        self.log_lines: list[str] = []
        for n in range(_LOG_SEED_LINES):
            self.event(
                f"boot self-test {n:02d}: sensor block {n % 4} ok, checksum {self.rng.getrandbits(32):08x}"
            )

    @property
    def values(self) -> dict[str, Value]:
        """Engineering values by the ``manhole_cover`` profile's point names."""
        return {
            "tilt": self.tilt,
            "cover_open": self.open,
            "temperature": self.temperature,
            "water_level": self.water_level,
            "battery": self.battery,
            "report_interval": self.report_interval,
        }

    def event(self, text: str) -> None:
        self.log_lines.append(f"t={self.ticks:06d} {text}")
        del self.log_lines[:-_LOG_LINES_KEPT]

    def step(self) -> None:
        """One tick of physics."""
        rng = self.rng
        self.ticks += 1
        # battery: a little per tick, more the more often the sensor reports
        self._battery_exact = max(
            0.0, self._battery_exact - 0.002 * (1 + 60 / self.report_interval)
        )
        self.battery = round(self._battery_exact, 1)
        # rain events fill the chamber; otherwise it drains back to its base level
        if self.rain_ticks == 0 and rng.random() < 0.01:
            self.start_rain(rng.randint(20, 60), rng.uniform(0.5, 3.0))
        if self.rain_ticks > 0:
            self.rain_ticks -= 1
            self.water_level += self.rain_cm_per_tick * rng.uniform(0.7, 1.3)
        else:
            self.water_level += 0.05 * (self.BASE_WATER_CM - self.water_level)
        self.water_level = round(min(500.0, max(0.0, self.water_level + rng.gauss(0.0, 0.05))), 1)
        drift = 0.02 * (self.BASE_TEMPERATURE_C - self.temperature) + rng.gauss(0.0, 0.05)
        self.temperature = round(min(85.0, max(-40.0, self.temperature + drift)), 1)
        base_tilt = self._lifted_tilt if self.open else 0.3
        self.tilt = round(min(90.0, max(0.0, base_tilt + rng.gauss(0.0, 0.05))), 1)

    def set(self, name: str, value: Value) -> None:
        """Set ``tilt``, ``water_level``, ``battery``, ``temperature``, ``open`` or
        ``report_interval`` (the physics carries on from there on the next tick)."""
        if name not in _SETTABLE:
            raise KeyError(f"the manhole sensor has no settable value '{name}'")
        setattr(self, name, value)
        if name == "battery" and isinstance(value, int | float):
            self._battery_exact = float(value)

    def start_rain(self, ticks: int = 30, cm_per_tick: float = 2.0) -> None:
        self.rain_ticks, self.rain_cm_per_tick = ticks, cm_per_tick
        self.event(f"rain: water rising {cm_per_tick:.1f} cm/tick for {ticks} ticks")

    def lift_cover(self) -> None:
        """The cover is lifted: open, and the tilt jumps to tens of degrees."""
        self.open = True
        self._lifted_tilt = round(self.rng.uniform(20.0, 45.0), 1)
        self.tilt = self._lifted_tilt
        self.event(f"cover lifted, tilt {self.tilt:.1f} deg")

    def close_cover(self) -> None:
        self.open = False
        self.tilt = 0.3
        self.event("cover closed")


def _number(value: float) -> bytes:
    return (str(int(value)) if float(value).is_integer() else f"{value:.1f}").encode()


class _SensorResource(resource.ObservableResource):  # type: ignore[misc]  # aiocoap is untyped
    """A resource rendered from the model by ``render``; fault-aware; logs what it sends."""

    def __init__(
        self,
        sim: ManholeSensorSim,
        path: str,
        render: Callable[[], bytes],
        content_format: ContentFormat,
        rt: str,
    ) -> None:
        super().__init__()
        self.sim = sim
        self.path = path
        self._render = render
        self.content_format = content_format
        self.ct = int(content_format)
        self.rt = rt
        self.last_payload = render()

    def update_observation_count(self, newcount: int) -> None:
        self.sim.observer_counts[self.path] = newcount
        self.sim.activity()

    def notify_if_changed(self) -> None:
        payload = self._render()
        if payload != self.last_payload:
            self.last_payload = payload
            self.updated_state()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.sim.answer(self.path, self._render, self.content_format)


class _ConfigResource(_SensorResource):
    """``/config/report-interval``: readable, observable, writable with PUT or POST."""

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.sim.accept_write(self.path, request)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.sim.accept_write(self.path, request)


class _LogResource(resource.Resource):  # type: ignore[misc]  # aiocoap is untyped
    """``/log``: the event log, large enough to need block-wise transfer."""

    ct = int(TEXT)
    rt = "event-log"

    def __init__(self, sim: ManholeSensorSim) -> None:
        super().__init__()
        self.sim = sim

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self.sim.answer("/log", self.sim.log_body, TEXT)


@dataclass
class ManholeSensorSim:
    """A running manhole cover sensor: a :class:`ManholeCoverModel` behind an aiocoap server."""

    model: ManholeCoverModel
    host: str = "127.0.0.1"
    port: int = 0
    max_age_s: int = 60
    faults: CoapFaults = field(default_factory=CoapFaults)
    #: The latest requests that arrived and answers sent (the oldest are dropped).
    requests: deque[CoapRequestRecord] = field(default_factory=lambda: deque(maxlen=_KEPT))
    sent: deque[CoapSentRecord] = field(default_factory=lambda: deque(maxlen=_KEPT))
    writes: list[CoapWriteRecord] = field(default_factory=list)
    #: Observers registered per resource path (as the server counts them).
    observer_counts: dict[str, int] = field(default_factory=dict)
    _context: aiocoap.Context | None = None
    _resources: dict[str, _SensorResource] = field(default_factory=dict)
    _activity: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        return f"coap://{self.host}:{self.port}"

    @property
    def profile(self) -> DeviceProfile:
        """The device profile this sensor implements (``manhole_cover``)."""
        return load_builtin_profile("manhole_cover")

    @property
    def running(self) -> bool:
        return self._context is not None

    @property
    def values(self) -> dict[str, Value]:
        """The current engineering values, by point name of the ``manhole_cover`` profile."""
        return self.model.values

    # -- control ------------------------------------------------------------------------

    def step(self) -> None:
        """Advance the physics one tick and notify observers of what changed."""
        self.model.step()
        self.changed()

    def lift_cover(self) -> None:
        self.model.lift_cover()
        self.changed()

    def close_cover(self) -> None:
        self.model.close_cover()
        self.changed()

    def set(self, name: str, value: Value) -> None:
        """Set a model value (see :meth:`ManholeCoverModel.set`) and notify observers."""
        self.model.set(name, value)
        self.changed()

    def changed(self) -> None:
        """Notify the observers of every resource whose representation changed."""
        for res in self._resources.values():
            res.notify_if_changed()

    async def run(self, tick_s: float) -> None:
        """Tick every ``tick_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(tick_s)
            self.step()

    def count(self, method: str, path: str, *, include_dropped: bool = False) -> int:
        """How many ``method`` requests for ``path`` arrived."""
        return sum(
            1
            for r in self.requests
            if r.method == method and r.path == path and (include_dropped or not r.dropped)
        )

    def observers(self, path: str) -> int:
        return self.observer_counts.get(path, 0)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds, re-checked whenever a request arrives, an answer
        or notification is sent, a write is logged or an observer comes or goes
        (TimeoutError after ``timeout_s``)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._activity.clear()
                await self._activity.wait()

    async def wait_observers(self, path: str, count: int, timeout_s: float = 5.0) -> None:
        """Wait until ``path`` has at least ``count`` observers."""
        await self.wait_until(lambda: self.observers(path) >= count, timeout_s)

    def activity(self) -> None:
        """Wake :meth:`wait_until` (called on every logged event)."""
        self._activity.set()

    # -- serving ------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve on ``host:port`` (a free port when 0; kept for :meth:`restart`)."""
        if self._context is not None:
            return
        site = resource.Site()
        m = self.model
        self._resources = {
            "/tilt": _SensorResource(self, "/tilt", lambda: _number(m.tilt), TEXT, "tilt"),
            "/water-level": _SensorResource(
                self, "/water-level", lambda: _number(m.water_level), TEXT, "water-level"
            ),
            "/battery": _SensorResource(
                self, "/battery", lambda: _number(m.battery), TEXT, "battery"
            ),
            "/cover": _SensorResource(self, "/cover", self._cover_body, JSON, "cover"),
            "/config/report-interval": _ConfigResource(
                self,
                "/config/report-interval",
                lambda: str(m.report_interval).encode(),
                TEXT,
                "config",
            ),
        }
        for path, res in self._resources.items():
            site.add_resource(path.strip("/").split("/"), res)
        site.add_resource(["log"], _LogResource(self))
        site.add_resource(
            [".well-known", "core"],
            resource.WKCResource(site.get_resources_as_linkheader, impl_info=None),
        )
        self.observer_counts = {}
        try:
            context = await aiocoap.Context.create_server_context(
                site, bind=(self.host, self.port), transports=["udp6"]
            )
        except OSError as exc:
            raise OSError(f"cannot serve CoAP on {self.host}:{self.port}: {exc}") from exc
        self._context = context
        self.port = self._hook_transport(context)
        log.info("coap sensor serving", endpoint=self.endpoint)

    async def stop(self) -> None:
        """Stop serving (observers are forgotten, as on a device reboot). Idempotent."""
        context, self._context = self._context, None
        if context is not None:
            await context.shutdown()
            log.info("coap sensor stopped", endpoint=self.endpoint)

    async def restart(self) -> None:
        """Stop and serve again on the same port, like a rebooting device."""
        await self.stop()
        await self.start()

    def _hook_transport(self, context: aiocoap.Context) -> int:
        """Log (and, with ``faults.drop``, swallow) incoming requests; return the bound port.

        aiocoap has no public hook below the resource layer: the request interface's message
        manager is wrapped per instance (aiocoap 0.4.17), before deduplication and ACKs.
        """
        port = self.port
        for interface in context.request_interfaces:
            manager = getattr(interface, "token_interface", None)
            if not isinstance(manager, MessageManager):
                continue
            dispatch = manager.dispatch_message

            def hooked(
                message: aiocoap.Message, dispatch: Callable[[Any], None] = dispatch
            ) -> None:
                if message.code.is_request():
                    dropped = self.faults.take("drop")
                    self.requests.append(
                        CoapRequestRecord(
                            ts=time.time(),
                            method=str(message.code),
                            path="/" + "/".join(message.opt.uri_path),
                            observe=message.opt.observe,
                            dropped=dropped,
                        )
                    )
                    self.activity()
                    if dropped:
                        log.debug("coap request dropped (fault)", path=message.opt.uri_path)
                        return
                dispatch(message)

            manager.dispatch_message = hooked
            sock = manager.message_interface.transport.get_extra_info("socket")
            port = int(sock.getsockname()[1])
        return port

    async def answer(
        self, path: str, render: Callable[[], bytes], content_format: ContentFormat
    ) -> aiocoap.Message:
        """Render ``path`` through the faults in force; log what is sent."""
        faults = self.faults
        delay_s = faults.delay_s
        if faults.take("delay"):
            await asyncio.sleep(delay_s)  # the device is slow to answer
        if faults.take("unavailable"):
            message = aiocoap.Message(
                code=Code.SERVICE_UNAVAILABLE, payload=b"fault injected", max_age=1
            )
        else:
            payload = MALFORMED_PAYLOAD if faults.take("malformed") else render()
            message = aiocoap.Message(
                payload=payload, content_format=content_format, max_age=self.max_age_s
            )
        code = str(message.code or Code.CONTENT)
        self.sent.append(
            CoapSentRecord(ts=time.time(), path=path, code=code, payload=message.payload)
        )
        log.debug("coap sent", path=path, code=code, payload=message.payload[:64])
        self.activity()
        return message

    async def accept_write(self, path: str, request: aiocoap.Message) -> aiocoap.Message:
        faults = self.faults
        delay_s = faults.delay_s
        if faults.take("delay"):
            await asyncio.sleep(delay_s)
        if faults.take("unavailable"):
            return aiocoap.Message(code=Code.SERVICE_UNAVAILABLE, payload=b"fault injected")
        value = _parse_interval(request.payload)
        method = str(request.code)
        self.writes.append(
            CoapWriteRecord(
                ts=time.time(), path=path, method=method, payload=request.payload, value=value
            )
        )
        self.activity()
        if value is None:
            log.info("coap write refused", path=path, payload=request.payload[:64])
            return aiocoap.Message(
                code=Code.BAD_REQUEST,
                payload=f"report interval must be an integer {_INTERVAL_RANGE}".encode(),
            )
        self.model.report_interval = value
        self.model.event(f"config: report interval set to {value} s ({method})")
        log.info("coap write", path=path, value=value)
        self.changed()
        return aiocoap.Message(code=Code.CHANGED)

    def _cover_body(self) -> bytes:
        m = self.model
        return json.dumps({"open": m.open, "tilt": m.tilt, "temperature": m.temperature}).encode()

    def log_body(self) -> bytes:
        return ("\n".join(self.model.log_lines) + "\n").encode()


def _parse_interval(payload: bytes) -> int | None:
    """The report interval in a write: ``30``, ``30.0``, or ``{"report_interval": 30}``.

    The number is checked by the profile's point (:meth:`Point.check_value`: a finite number
    within its ``min`` and ``max``), like a command to the real device; None for anything else.
    """
    try:
        data: Any = json.loads(payload.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if isinstance(data, dict):
        data = data.get("report_interval")
    if isinstance(data, bool) or not isinstance(data, int | float):
        return None
    if isinstance(data, float) and not data.is_integer():
        return None
    try:
        _INTERVAL_POINT.check_value(data)
    except CommandRejected:
        return None
    return int(data)


@asynccontextmanager
async def run_manhole_sensor(
    *,
    seed: int | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    tick_s: float | None = 1.0,
    max_age_s: int = 60,
) -> AsyncIterator[ManholeSensorSim]:
    """Serve a simulated manhole cover sensor until the block exits.

    ``port=0`` picks a free UDP port (see ``sim.port``); ``tick_s=None`` never ticks on its own
    (call ``sim.step()``), which keeps values still for tests. ``max_age_s`` is the Max-Age of
    every answer: how long a client may treat a value (and an observation) as fresh.
    """
    sim = ManholeSensorSim(
        model=ManholeCoverModel(seed=seed), host=host, port=port, max_age_s=max_age_s
    )
    await sim.start()
    try:
        async with ticking(sim.run, tick_s, name="manhole sensor tick"):
            yield sim
    finally:
        await sim.stop()
