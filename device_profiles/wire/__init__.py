"""Wire contract v1 between edge agents and the hub: topics, payloads, QoS. See docs/protocol.md."""

from device_profiles.wire.errors import WireError
from device_profiles.wire.messages import (
    MAX_READINGS_PER_BATCH,
    AgentHealth,
    AgentState,
    CommandRequest,
    CommandResult,
    CommandStatus,
    DeviceEvent,
    DeviceHealth,
    DeviceInfo,
    Reading,
    TelemetryBatch,
    decode,
    decode_telemetry,
    encode,
)
from device_profiles.wire.session import (
    KEEPALIVE_S,
    SESSION_EXPIRY_S,
    agent_client_id,
)
from device_profiles.wire.topics import (
    ID_PATTERN,
    QOS,
    ROOT,
    Channel,
    parse_topic,
    shared,
    subscription,
    topic,
)

__all__ = [
    "ID_PATTERN",
    "KEEPALIVE_S",
    "MAX_READINGS_PER_BATCH",
    "QOS",
    "ROOT",
    "SESSION_EXPIRY_S",
    "AgentHealth",
    "AgentState",
    "Channel",
    "CommandRequest",
    "CommandResult",
    "CommandStatus",
    "DeviceEvent",
    "DeviceHealth",
    "DeviceInfo",
    "Reading",
    "TelemetryBatch",
    "WireError",
    "agent_client_id",
    "decode",
    "decode_telemetry",
    "encode",
    "parse_topic",
    "shared",
    "subscription",
    "topic",
]
