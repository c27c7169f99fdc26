"""Prometheus metrics of the hub, gathered at scrape time from the hub's own counters."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from cloud_hub.hub import Hub
from cloud_hub.lighting.models import LightingFiringRow, LightingStrategyRow
from cloud_hub.registry import AgentRow, CommandRow

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _cluster_metrics(hub: Hub) -> list[Metric]:
    """Leadership and the durable event log (see cloud_hub.cluster.leadership, cloud_hub.events.log)."""
    log = hub.event_log
    return [
        _gauge("hub_leader", "1 if this process runs the leader duties", float(hub.is_leader)),
        _counter(
            "hub_leader_changes",
            "Times this process gained or lost the lead",
            hub.leadership.changes,
        ),
        _counter(
            "hub_event_log_appended", "Events appended to the event log", log.stats["appended"]
        ),
        _counter(
            "hub_event_log_duplicates",
            "Events another process had appended already",
            log.stats["duplicates"],
        ),
        _counter(
            "hub_event_log_dropped", "Events lost: the append queue was full", float(log.dropped)
        ),
        _counter("hub_event_log_errors", "Failed append attempts (retried)", log.stats["errors"]),
    ]


def _inbound_metrics(hub: Hub) -> list[Metric]:
    """Back-pressure of the telemetry session (see iot_runtime.mqtt_inbound)."""
    inbound = hub.telemetry_inbound
    return [
        _gauge(
            "hub_mqtt_inbound_queue",
            "Telemetry messages received, not yet taken by ingest",
            inbound.queued,
        ),
        _gauge(
            "hub_mqtt_inbound_queue_peak",
            "Most telemetry messages ever queued, not yet taken by ingest",
            inbound.peak,
        ),
        _counter(
            "hub_mqtt_inbound_paused",
            "Times the telemetry session stopped reading (its queue at the high watermark)",
            inbound.pauses,
        ),
        _counter(
            "hub_mqtt_inbound_paused_seconds",
            "Time the telemetry session did not read (the broker held the backlog)",
            inbound.paused_seconds(),
        ),
        _counter(
            "hub_mqtt_inbound_overflow",
            "Telemetry messages refused at the queue's cap (unacknowledged: redelivered after "
            "the reconnect that follows)",
            inbound.overflowed,
        ),
        _counter(
            "hub_mqtt_inbound_overflow_reconnects",
            "Telemetry session reconnects because its queue reached the cap",
            inbound.overflows,
        ),
    ]


def _limit_metrics(hub: Hub) -> list[Metric]:
    """What agents over their limits cost (see cloud_hub.ingest.agent_limits)."""
    limits = hub.limits
    shed = CounterMetricFamily(
        "hub_agent_shed_messages",
        "Messages of agents over their limits, shed before ingest (acknowledged, not stored)",
        labels=["reason"],
    )
    for reason in ("rate", "bytes", "size", "blocked"):
        shed.add_metric([reason], limits.stats[reason])
    return [
        shed,
        _gauge(
            "hub_agents_over_limit",
            "Agents that had messages shed within agent_limits.quiet_s",
            len(limits.over_limit()),
        ),
        _counter(
            "hub_agents_flooding_alarms",
            "Episodes of an agent over its limits that raised agent_flooding",
            limits.stats["alarms"],
        ),
        _counter(
            "hub_agents_disabled_by_policy",
            "Agents whose credentials the agent_limits policy revoked",
            limits.stats["disabled"],
        ),
    ]


async def render_metrics(hub: Hub) -> bytes:
    ingest, writer = hub.ingest.stats, hub.writer.stats
    metrics: list[Metric] = [
        _counter("hub_ingest_messages", "MQTT messages consumed", ingest["messages"]),
        _counter("hub_ingest_readings", "Readings stored", writer["readings"]),
        _counter(
            "hub_dead_letters",
            "Messages or readings refused, with a reason",
            ingest["dead_letters"],
        ),
        _counter(
            "hub_dead_letters_unsaved",
            "Dead letters not kept in the registry (queue full, or still queued at shutdown)",
            hub.dead_letters.stats["unsaved"],
        ),
        _gauge(
            "hub_dead_letters_queued",
            "Dead letters waiting to be written to the registry",
            hub.dead_letters.queued,
        ),
        _counter(
            "hub_command_results", "Command results received from agents", ingest["command_results"]
        ),
        _counter("hub_write_batches", "Writes to the telemetry store", writer["batches"]),
        _counter(
            "hub_write_retries", "Store writes retried (store unavailable)", writer["write_retries"]
        ),
        _counter(
            "hub_write_splits", "Store writes split in two (request too large)", writer["splits"]
        ),
        _counter(
            "hub_write_seconds",
            "Time spent in successful store writes",
            writer["write_seconds_total_ms"] / 1000,
        ),
        _gauge(
            "hub_writer_queue_messages", "Messages waiting to be written", hub.writer.queue.qsize()
        ),
        _counter(
            "hub_spooled_readings",
            "Readings spooled to disk while the store was unavailable",
            writer["spooled_readings"],
        ),
        _counter(
            "hub_write_rejected_splits",
            "Store writes refused in part, split in two to isolate the refused readings",
            writer["rejected_splits"],
        ),
        _gauge("hub_store_ready", "The telemetry store takes writes", float(hub.store_ready)),
        _counter(
            "hub_stored_acks",
            "Stored acknowledgements published to agents",
            hub.stored_acks.published,
        ),
        _counter(
            "hub_stored_acks_batches",
            "Telemetry batches acknowledged to their agents as stored",
            hub.stored_acks.batches,
        ),
        _gauge(
            "hub_stored_acks_waiting",
            "Stored batches whose acknowledgement waits to be published",
            hub.stored_acks.waiting,
        ),
        _counter(
            "hub_device_claims_refused",
            "Devices announced by an agent they do not belong to (refused, alarmed)",
            ingest["claims_refused"],
        ),
    ]
    spool = hub.writer.spool
    metrics.append(
        _gauge(
            "hub_spool_readings",
            "Readings waiting in the disk spool",
            spool.readings if spool else 0,
        )
    )
    metrics.append(
        _gauge("hub_spool_bytes", "Size of the disk spool's payloads", spool.bytes if spool else 0)
    )
    metrics.extend(_inbound_metrics(hub))
    metrics.extend(_limit_metrics(hub))
    connected = GaugeMetricFamily("hub_broker_connected", "MQTT sessions up", labels=["session"])
    connected.add_metric(["control"], float(hub.connected.is_set()))
    connected.add_metric(["telemetry"], float(hub.telemetry_connected.is_set()))
    if hub.alarm_feed is not None:  # the leader's own telemetry subscription, for alarms
        connected.add_metric(["alarms"], float(hub.alarm_feed.connected.is_set()))
    metrics.append(connected)
    metrics.extend(_cluster_metrics(hub))
    async with hub.registry.session() as db:
        agent_rows = await db.execute(select(AgentRow.state, func.count()).group_by(AgentRow.state))
        agents: dict[str, int] = {s: c for s, c in agent_rows}  # noqa: C416 - Rows, not pairs
        command_rows = await db.execute(
            select(CommandRow.status, func.count()).group_by(CommandRow.status)
        )
        commands: dict[str, int] = {s: c for s, c in command_rows}  # noqa: C416 - Rows, not pairs
        firing_rows = await db.execute(
            select(LightingFiringRow.outcome, func.count()).group_by(LightingFiringRow.outcome)
        )
        firings: dict[str, int] = {o: c for o, c in firing_rows}  # noqa: C416 - Rows, not pairs
        strategies = await db.scalar(
            select(func.count())
            .select_from(LightingStrategyRow)
            .where(LightingStrategyRow.enabled.is_(True))
        )
    agent_gauge = GaugeMetricFamily("hub_agents", "Agents by state", labels=["state"])
    for state in ("online", "offline"):
        agent_gauge.add_metric([state], float(agents.get(state, 0)))
    metrics.append(agent_gauge)
    firing_counter = CounterMetricFamily(
        "hub_lighting_firings",
        "Lighting strategy steps by outcome (sent, missed, rejected, failed, sending)",
        labels=["outcome"],
    )
    for outcome in ("sent", "missed", "rejected", "failed", "sending"):
        firing_counter.add_metric([outcome], float(firings.get(outcome, 0)))
    metrics.append(firing_counter)
    metrics.append(
        _gauge("hub_lighting_strategies", "Enabled lighting strategies", float(strategies or 0))
    )
    command_gauge = GaugeMetricFamily("hub_commands", "Commands by status", labels=["status"])
    for status, count in sorted(commands.items()):
        command_gauge.add_metric([status], float(count))
    metrics.append(command_gauge)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry)
