"""Which commands this agent has started and finished, on disk, so that a command id runs at
most once across restarts.

Before a command touches a device its id is appended (and fsynced) as ``started``; its result
is appended when it ends. After a restart a redelivered id is answered from the journal: with
its result, or, if the agent died between start and result, with ``failed`` ("interrupted by
an agent restart") and never executed again. The file keeps the last ``keep`` commands and is
compacted when it grows past twice that.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import structlog
from pydantic import ValidationError

from device_profiles.wire import CommandResult

__all__ = ["CommandJournal"]

log = structlog.get_logger(__name__)


class CommandJournal:
    def __init__(self, path: Path, keep: int = 10_000) -> None:
        self.path = path
        self.keep = keep
        #: command id -> its result, or None while it runs (or ran when the agent died)
        self.entries: OrderedDict[str, CommandResult | None] = OrderedDict()
        self._lines = 0
        self._load()
        self._file = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as journal:
            for number, line in enumerate(journal, start=1):
                try:
                    entry = json.loads(line)
                    result = entry.get("result")
                    self.entries[entry["id"]] = (
                        CommandResult.model_validate(result) if result is not None else None
                    )
                    self.entries.move_to_end(entry["id"])
                except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
                    log.warning("unreadable command journal line skipped", line=number)
                self._lines += 1
        while len(self.entries) > self.keep:
            self.entries.popitem(last=False)

    def started(self, command_id: str) -> None:
        """Record that a command starts (durably, before the device is touched)."""
        self._append({"id": command_id})
        self.entries[command_id] = None

    def finished(self, result: CommandResult) -> None:
        self._append({"id": result.command_id, "result": result.model_dump(mode="json")})
        self.entries[result.command_id] = result
        while len(self.entries) > self.keep:
            self.entries.popitem(last=False)
        if self._lines > 2 * self.keep:
            self._compact()

    def _append(self, entry: dict[str, object]) -> None:
        self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._lines += 1

    def _compact(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as out:
            for command_id, result in self.entries.items():
                entry: dict[str, object] = {"id": command_id}
                if result is not None:
                    entry["result"] = result.model_dump(mode="json")
                out.write(json.dumps(entry, separators=(",", ":")) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")
        self._lines = len(self.entries)

    def close(self) -> None:
        self._file.close()
