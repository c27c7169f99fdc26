"""Payloads of wire contract v1 (JSON; see docs/protocol.md).

Times are integers: milliseconds since the Unix epoch, UTC. ``ts`` of a reading is when the
edge *read* the value, so a replayed reading lands on its original time, and because a time
series store keeps one value per series and time, a replay after an outage is idempotent.

Consumers ignore fields they do not know (additive changes keep ``v`` at 1); anything else is a
new major version with its own topic root.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

from device_profiles.wire.errors import WireError
from device_profiles.wire.topics import ID_PATTERN

__all__ = [
    "MAX_ACKED_SEQS",
    "MAX_READINGS_PER_BATCH",
    "MESSAGE_TYPES",
    "TERMINAL_COMMAND_STATUSES",
    "AgentHealth",
    "AgentState",
    "CommandRequest",
    "CommandResult",
    "CommandStatus",
    "DesiredConfig",
    "DeviceEvent",
    "DeviceHealth",
    "DeviceInfo",
    "ModemHealth",
    "ModemPsm",
    "ModemQuality",
    "ModemRegistration",
    "Reading",
    "ReportedConfig",
    "StoredAck",
    "TelemetryBatch",
    "decode",
    "decode_telemetry",
    "encode",
]

WireId = Annotated[str, Field(pattern=ID_PATTERN)]
PointName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
EpochMs = Annotated[int, Field(ge=0, lt=2**53)]
WireValue = StrictBool | StrictInt | StrictFloat | StrictStr
MAX_READINGS_PER_BATCH = 10_000
#: Most batch sequence numbers one :class:`StoredAck` carries.
MAX_ACKED_SEQS = 1000

#: Statuses an agent reports for a command. The hub adds queued, sent, timed_out, cancelled.
CommandStatus = Literal["delivered", "succeeded", "failed", "rejected", "expired"]
#: Command statuses after which nothing changes any more (the hub's and the agents').
TERMINAL_COMMAND_STATUSES = frozenset(
    {"succeeded", "failed", "rejected", "expired", "timed_out", "cancelled"}
)


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1


class Reading(BaseModel):
    """Values of one device read at one time. Numbers are finite: NaN, ±Infinity and
    overflowing literals such as ``1e999`` are refused (no store can keep them)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    device_id: WireId
    ts: EpochMs
    values: dict[PointName, WireValue] = Field(min_length=1)


class TelemetryBatch(_Message):
    """Readings an agent publishes together. ``seq`` grows by one per batch and agent."""

    agent_id: WireId
    seq: int = Field(ge=0)
    readings: list[Reading] = Field(min_length=1, max_length=MAX_READINGS_PER_BATCH)


class DeviceEvent(_Message):
    """Something that happened to a device behind an agent."""

    agent_id: WireId
    device_id: WireId
    ts: EpochMs
    kind: Literal["online", "offline", "error"]
    detail: str = ""


class DeviceInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    device_id: WireId
    profile: str
    reading_interval_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="The longest the device's poll plan lets pass between two readings it "
        "reports (its shortest poll interval, or max_silent_s when it reports on change): the "
        "hub's collection rate expects at least one reading this often.",
    )


class AgentState(_Message):
    """Retained state of an agent: the birth message (online) or the Last Will (offline).

    A message states only what its sender knows when it is written: the birth message states
    the software version and the devices; the Last Will, composed at connect time and sent by
    the broker, states neither, and an omitted field means "not stated" (an empty ``devices``
    list would mean "this agent has no devices").
    """

    agent_id: WireId
    state: Literal["online", "offline"]
    ts: EpochMs | None = Field(
        default=None, description="Edge time of the message; omitted in a Last Will."
    )
    software_version: str | None = Field(
        default=None, description="The agent's software version; omitted: not stated."
    )
    devices: list[DeviceInfo] | None = Field(
        default=None,
        description="The agent's devices (a birth message states them all); omitted: not "
        "stated, and the devices the hub knows stay as they are.",
    )
    report_interval_s: float | None = Field(
        default=None,
        gt=0,
        description="An agent that holds no connection (NB-IoT, sleeping between uplinks) "
        "reports at least this often; the hub marks it offline after several missed reports.",
    )


class DeviceHealth(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    online: bool | None = None
    polls: int = 0
    errors: int = 0
    last_latency_ms: float = 0.0


#: Signal quality words of a modem (from its ``AT+CSQ`` dBm; see drivers/nbiot/modem_report.py).
ModemQuality = Literal["excellent", "good", "fair", "poor", "no_signal"]
#: Registration states of a modem (3GPP TS 27.007 ``+CEREG`` ``<stat>`` 0-5; 6-10 and anything
#: else: ``other``).
ModemRegistration = Literal[
    "not_searching",  # 0: not registered, not searching
    "registered_home",  # 1
    "searching",  # 2: not registered, searching
    "denied",  # 3: registration denied
    "unknown",  # 4: e.g. out of coverage
    "registered_roaming",  # 5
    "other",  # 6-10: SMS only, emergency, CSFB not preferred
]


class ModemPsm(BaseModel):
    """The modem's power saving timers (3GPP TS 24.008 GPRS Timer 3 / Timer 2), in seconds."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    enabled: bool = Field(description="PSM requested (AT+CPSMS mode 1).")
    periodic_tau_s: int | None = Field(
        default=None, ge=0, description="T3412 periodic TAU; None: deactivated."
    )
    active_time_s: int | None = Field(
        default=None, ge=0, description="T3324 active time; None: deactivated."
    )
    source: Literal["network", "requested"] = Field(
        description="network: the values the network granted (AT+CEREG=4); requested: the "
        "ones the modem asks for (AT+CPSMS?), when it does not tell the granted ones."
    )


class ModemHealth(BaseModel):
    """What an NB-IoT agent's modem said when last asked (``iotctl modem check`` shows the
    same, decoded by drivers/nbiot/modem_report.py)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    imei: str
    iccid: str | None = Field(default=None, description="None: no SIM, or not readable.")
    firmware: str | None = None
    bands: list[int] = Field(default_factory=list, description="Bands set (AT+NBAND?).")
    csq: int | None = Field(default=None, ge=0, le=99)
    rssi_dbm: int | None = Field(default=None, description="From CSQ; None: not known (99).")
    rsrp_dbm: float | None = Field(default=None, description="From AT+NUESTATS, if given.")
    snr_db: float | None = Field(default=None, description="From AT+NUESTATS, if given.")
    quality: ModemQuality
    registration: ModemRegistration
    attached: bool | None = Field(default=None, description="AT+CGATT?; None: not known.")
    psm: ModemPsm | None = Field(default=None, description="None: not known.")
    verdict: str = Field(description="Stable code of the modem check's verdict (ok, no_sim, ...).")
    checked_at: EpochMs


class AgentHealth(_Message):
    """Periodic statistics of an agent."""

    agent_id: WireId
    ts: EpochMs
    uptime_s: float = 0.0
    cpu_seconds: float = Field(default=0.0, description="CPU time used since start (user+system).")
    rss_bytes: int = 0
    buffer_readings: int = Field(default=0, description="Readings waiting to be sent.")
    buffer_bytes: int = 0
    dropped_readings: int = 0
    uplink_connects: int = 0
    unconfirmed_batches: int = Field(
        default=0, description="Telemetry batches sent and not yet confirmed stored by the hub."
    )
    resent_batches: int = Field(
        default=0, description="Telemetry batches sent again (no stored acknowledgement in time)."
    )
    devices: dict[WireId, DeviceHealth] = Field(default_factory=dict)
    modem: ModemHealth | None = Field(
        default=None, description="An NB-IoT agent's modem figures; omitted by other agents."
    )


class CommandRequest(_Message):
    """A command for a device, sent to the agent the device is behind."""

    command_id: WireId
    device_id: WireId
    name: PointName
    params: dict[PointName, WireValue] = Field(default_factory=dict)
    issued_at: EpochMs
    expires_at: EpochMs | None = None


class CommandResult(_Message):
    """What an agent did with a command."""

    command_id: WireId
    device_id: WireId
    status: CommandStatus
    detail: str = ""
    ts: EpochMs


class DesiredConfig(_Message):
    """Configuration the hub wants an agent to run (retained on ``config/desired``).

    ``config`` is the agent's remotely manageable settings (its devices and reporting
    knobs); the agent validates it, applies it without a restart, and answers with a
    :class:`ReportedConfig`. The hub relays it and does not interpret it.
    """

    agent_id: WireId
    version: int = Field(ge=1)
    config: dict[str, Any]
    issued_at: EpochMs | None = None


class ReportedConfig(_Message):
    """What an agent did with a desired configuration (retained on ``config/reported``)."""

    agent_id: WireId
    version: int = Field(ge=0)
    status: Literal["applied", "rejected"]
    detail: str = ""
    ts: EpochMs


class StoredAck(_Message):
    """Telemetry batches of an agent that the hub has stored (or kept as dead letters), by
    ``seq``: the agent may forget them. Published by the hub on the agent's ``acks`` channel."""

    agent_id: WireId
    seqs: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=MAX_ACKED_SEQS)


#: Every message type of the contract (e.g. for a store that keeps messages by type name).
MESSAGE_TYPES: tuple[type[BaseModel], ...] = (
    AgentHealth,
    AgentState,
    CommandRequest,
    CommandResult,
    DesiredConfig,
    DeviceEvent,
    ReportedConfig,
    StoredAck,
    TelemetryBatch,
)

M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel) -> bytes:
    """The JSON payload of a message."""
    return message.model_dump_json(exclude_none=True).encode()


def decode(model: type[M], payload: bytes | str) -> M:
    """Parse a payload as ``model``; raise WireError listing each problem with its path."""
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise WireError(_describe(model.__name__, exc)) from exc


class _Envelope(_Message):
    agent_id: WireId
    seq: int = Field(ge=0)
    readings: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_READINGS_PER_BATCH)


_READING = TypeAdapter(Reading)


def decode_telemetry(payload: bytes | str) -> tuple[TelemetryBatch, list[tuple[int, str]]]:
    """Parse a telemetry batch keeping the good readings when some are malformed.

    Returns the batch of valid readings (possibly empty) and, for each rejected reading, its
    index in the payload and the reason. Raises WireError when the envelope itself is broken.
    """
    try:
        return TelemetryBatch.model_validate_json(payload), []
    except ValidationError:
        pass  # fall through: find out which readings are bad
    envelope = decode(_Envelope, payload)
    good: list[Reading] = []
    bad: list[tuple[int, str]] = []
    for index, raw in enumerate(envelope.readings):
        try:
            good.append(_READING.validate_python(raw))
        except ValidationError as exc:
            bad.append((index, _describe(f"readings[{index}]", exc)))
    batch = TelemetryBatch.model_construct(
        v=1, agent_id=envelope.agent_id, seq=envelope.seq, readings=good
    )
    return batch, bad


def _describe(what: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    more = exc.error_count() - len(parts)
    return f"invalid {what}: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
