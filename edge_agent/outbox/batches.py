"""What the spool hands out next, read back from its file: control messages and batches.

:class:`SpoolReader` finds the oldest control message, picks the ids of the next telemetry
batch (live and backlog readings in turn: "Live data during a replay" in
:mod:`edge_agent.outbox.spool`) and reads a batch's readings back into a :class:`TelemetryBatch`. A
row that no longer parses is deleted, logged with its content at ERROR and counted
(``corrupt_control``, ``corrupt_readings``), so one bad row never blocks the uplink. Which
message is in flight, and when a batch is recorded or deleted, is
:class:`~edge_agent.outbox.spool.DiskOutbox`'s.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from pydantic import BaseModel, ValidationError

from device_profiles.wire import Channel, Reading, TelemetryBatch
from edge_agent.outbox.file import SpoolError, SpoolFile
from edge_agent.outbox.memory import Outgoing

__all__ = ["SpoolBatch", "SpoolReader"]

log = structlog.get_logger(__name__)

_PICK_SQL = (
    "UPDATE readings SET seq = ? WHERE id IN (SELECT id FROM readings "
    "WHERE id {} ? AND seq IS NULL ORDER BY id {} LIMIT ?) RETURNING id"
)


@dataclass(frozen=True)
class SpoolBatch:
    """A telemetry batch handed out: its ``seq`` names its readings (column ``seq``)."""

    seq: int


class SpoolReader:
    """Reads the next message out of ``file``; ``models`` by name parse its control messages."""

    def __init__(self, file: SpoolFile, models: Mapping[str, type[BaseModel]]) -> None:
        self.file = file
        self.models = models
        #: Readings above this id are live (put since the last live batch); the rest backlog.
        self.live_floor = file.query("SELECT coalesce(max(id), 0) FROM readings")
        self._live_turn = True

    def oldest_control(self) -> tuple[int, Outgoing] | None:
        """The oldest control message and its row id; one that cannot be read back is deleted
        and counted."""
        file, db = self.file, self.file.db
        while file.control_rows:
            row_id, channel, kind, body = db.execute(
                "SELECT id, channel, kind, body FROM control ORDER BY id LIMIT 1"
            ).fetchone()
            model = self.models.get(kind)
            error = f"unknown message type {kind}; pass it in control_models"
            if model is not None:
                try:
                    return row_id, Outgoing(Channel(channel), model.model_validate_json(body))
                except (ValidationError, ValueError) as exc:
                    error = str(exc)
            log.error(
                "unreadable control message in the spool deleted",
                kind=kind,
                channel=channel,
                body=str(body[:500]),
                error=error,
            )
            try:
                with file.tx():
                    db.execute("DELETE FROM control WHERE id = ?", (row_id,))
                    file.control_rows -= 1
                    file.bump("corrupt_control", 1)
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {file.path}: deleting a bad row failed: {exc}") from exc
        return None

    def assign(self, seq: int, size: int) -> int:
        """Put at most ``size`` readings not yet in a batch into batch ``seq`` (inside a
        transaction): live and backlog readings in turn. Return how many."""
        file, floor = self.file, self.live_floor
        has_backlog = file.query(
            "SELECT 1 FROM readings WHERE id <= ? AND seq IS NULL LIMIT 1", floor
        )
        live = file.query(
            "SELECT count(*) FROM (SELECT 1 FROM readings WHERE id > ? AND seq IS NULL LIMIT ?)",
            floor,
            2 * size + 1,
        )
        if live and (not has_backlog or self._live_turn):
            self._live_turn = False
            # fallen behind by more than two batches: the newest first, the rest join the backlog
            order = "DESC" if live > 2 * size else "ASC"
            ids = file.db.execute(_PICK_SQL.format(">", order), (seq, floor, size)).fetchall()
            if ids:
                self.live_floor = max(int(r[0]) for r in ids)
        else:
            self._live_turn = True
            ids = file.db.execute(_PICK_SQL.format("<=", "ASC"), (seq, floor, size)).fetchall()
        return len(ids)

    def load(self, batch: SpoolBatch, agent_id: str) -> TelemetryBatch:
        """The readings of ``batch`` that still parse (the others are deleted and counted)."""
        rows = self.file.db.execute(
            "SELECT id, body FROM readings WHERE seq = ? ORDER BY id", (batch.seq,)
        ).fetchall()
        head = json.dumps({"agent_id": agent_id, "seq": batch.seq})[:-1].encode()
        try:  # one parse for the whole batch; row by row only if some row is bad
            bodies = b",".join(r[1] for r in rows)
            return TelemetryBatch.model_validate_json(head + b', "readings": [' + bodies + b"]}")
        except (TypeError, ValidationError):
            return self._salvage(batch, agent_id, rows)

    def _salvage(
        self, batch: SpoolBatch, agent_id: str, rows: list[tuple[int, bytes]]
    ) -> TelemetryBatch:
        good: list[Reading] = []
        bad: list[tuple[int]] = []
        sample = ""
        for row_id, body in rows:
            try:
                good.append(Reading.model_validate_json(body))
            except (ValidationError, TypeError, ValueError):
                bad.append((row_id,))
                sample = sample or str(body[:500])
        if bad:  # never sendable: delete and count them (the batch keeps its other readings)
            log.error(
                "unreadable readings in the spool deleted",
                seq=batch.seq,
                count=len(bad),
                first=sample,
            )
            file = self.file
            with contextlib.suppress(sqlite3.Error), file.tx():
                file.db.executemany("DELETE FROM readings WHERE id = ?", bad)
                file.disk_rows -= len(bad)
                file.bump("corrupt_readings", len(bad))
        return TelemetryBatch.model_construct(v=1, agent_id=agent_id, seq=batch.seq, readings=good)
