"""MQTT topic layout of wire contract v1: ``iot/v1/{agent_id}/{channel}``.

Every agent owns one namespace, ``iot/v1/{agent_id}/#``; broker ACLs grant an agent exactly that.

    channel            direction   QoS  retained  payload
    telemetry          edge → hub  1    no        TelemetryBatch
    events             edge → hub  1    no        DeviceEvent
    state              edge → hub  1    yes       AgentState (birth message and Last Will)
    commands           hub → edge  1    no        CommandRequest
    command-results    edge → hub  1    no        CommandResult
    config/desired     hub → edge  1    yes       desired agent configuration
    config/reported    edge → hub  1    yes       configuration the agent applied or rejected
    health             edge → hub  1    no        AgentHealth (periodic statistics)
    acks               hub → edge  0    no        StoredAck (telemetry batches the hub stored)

``acks`` is QoS 0: a lost acknowledgement only makes the agent resend a batch, which the store
keeps once (one value per series and time).
"""

from __future__ import annotations

import re
from enum import StrEnum

from device_profiles.wire.errors import WireError

__all__ = [
    "ID_PATTERN",
    "QOS",
    "ROOT",
    "Channel",
    "parse_topic",
    "shared",
    "subscription",
    "topic",
]

ROOT = "iot/v1"
#: QoS of every message in the contract (at-least-once; storage makes it exactly-once).
QOS = 1
#: Agent and device ids: safe in topics, file names, InfluxDB tags and URLs.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_ID = re.compile(ID_PATTERN)


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    EVENTS = "events"
    STATE = "state"
    COMMANDS = "commands"
    COMMAND_RESULTS = "command-results"
    CONFIG_DESIRED = "config/desired"
    CONFIG_REPORTED = "config/reported"
    HEALTH = "health"
    ACKS = "acks"

    @property
    def retained(self) -> bool:
        return self in (Channel.STATE, Channel.CONFIG_DESIRED, Channel.CONFIG_REPORTED)

    @property
    def downlink(self) -> bool:
        """Whether the hub publishes on this channel (and the agent subscribes)."""
        return self in (Channel.COMMANDS, Channel.CONFIG_DESIRED, Channel.ACKS)

    @property
    def qos(self) -> int:
        """The channel's QoS: :data:`QOS`, but 0 for stored acknowledgements."""
        return 0 if self is Channel.ACKS else QOS


def topic(agent_id: str, channel: Channel) -> str:
    """The topic of ``channel`` in ``agent_id``'s namespace."""
    if not _ID.match(agent_id):
        raise WireError(f"agent id {agent_id!r} does not match {ID_PATTERN}")
    return f"{ROOT}/{agent_id}/{channel.value}"


def subscription(channel: Channel, agent_id: str = "+") -> str:
    """A topic filter for ``channel`` of one agent or (default) of every agent."""
    return f"{ROOT}/{agent_id}/{channel.value}"


def shared(group: str, topic_filter: str) -> str:
    """An MQTT 5 shared subscription: brokers split matching messages over the group."""
    return f"$share/{group}/{topic_filter}"


def parse_topic(name: str) -> tuple[str, Channel]:
    """Split a contract topic into (agent id, channel); raise WireError if it is not one."""
    prefix = ROOT + "/"
    if not name.startswith(prefix):
        raise WireError(f"topic {name!r} is outside {ROOT}/")
    agent_id, _, rest = name[len(prefix) :].partition("/")
    if not _ID.match(agent_id):
        raise WireError(f"topic {name!r}: agent id {agent_id!r} does not match {ID_PATTERN}")
    try:
        return agent_id, Channel(rest)
    except ValueError:
        raise WireError(f"topic {name!r}: unknown channel {rest!r}") from None
