"""Stored acknowledgements: telling each agent which of its telemetry batches the hub stored.

Once a telemetry message's readings are in the store (or the hub's disk spool, or kept as
dead letters), the telemetry session acknowledges it to the broker (PUBACK) and adds its
``(agent id, seq)`` here. :meth:`StoredAcks.run` publishes them on each agent's ``acks``
channel, gathered for ``linger_s`` into one :class:`~device_profiles.wire.StoredAck` per agent,
with QoS 0: a lost acknowledgement only makes the agent send the batch again, which the store
keeps once. Until then the agent keeps the batch in its spool, so a broker that loses what it
had acknowledged (killed before writing its queues to disk) costs no reading.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import structlog

from device_profiles.wire import MAX_ACKED_SEQS, Channel, StoredAck, encode, topic

__all__ = ["StoredAcks"]

log = structlog.get_logger(__name__)


class StoredAcks:
    """Sequence numbers of stored batches, waiting to be published per agent."""

    def __init__(self, linger_s: float = 0.02) -> None:
        self.linger_s = linger_s
        #: acknowledgements published, and batches they confirmed
        self.published = 0
        self.batches = 0
        self._waiting: dict[str, list[int]] = {}
        self._added = asyncio.Event()

    def add(self, agent_id: str, seq: int) -> None:
        self._waiting.setdefault(agent_id, []).append(seq)
        self._added.set()

    @property
    def waiting(self) -> int:
        return sum(len(seqs) for seqs in self._waiting.values())

    async def run(self, client: aiomqtt.Client) -> None:
        """Publish what is added through ``client`` until cancelled or the link fails (what
        was not published stays waiting for the next session)."""
        while True:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # aiomqtt's publish waits with asyncio.wait_for, which on Python 3.11 can
                # swallow a cancellation that meets its result: honour it here
                raise asyncio.CancelledError
            await self._added.wait()
            await asyncio.sleep(self.linger_s)  # let the acknowledgements of a burst gather
            self._added.clear()
            waiting, self._waiting = self._waiting, {}
            try:
                for agent_id in list(waiting):
                    seqs = waiting[agent_id]
                    while seqs:
                        chunk = seqs[:MAX_ACKED_SEQS]
                        ack = StoredAck(agent_id=agent_id, seqs=chunk)
                        await client.publish(
                            topic(agent_id, Channel.ACKS), encode(ack), qos=Channel.ACKS.qos
                        )
                        del seqs[: len(chunk)]
                        self.published += 1
                        self.batches += len(chunk)
                    del waiting[agent_id]
            finally:
                for agent_id, seqs in waiting.items():  # not published: keep for later
                    self._waiting.setdefault(agent_id, [])[:0] = seqs
                if waiting:
                    self._added.set()
