"""The spool's SQLite file: opening it, setting an unusable one aside, the bookkeeping kept in it.

Opening (:class:`SpoolFile`) creates the directory, takes an exclusive lock (one process per
spool: a file locked by another process raises :class:`SpoolError`), switches to WAL mode with
the ``synchronous`` level and WAL size asked for, runs ``PRAGMA quick_check(1)`` and creates the
schema. A file that is not a spool, is corrupt or has an unknown schema version is renamed
aside (``<name>.corrupt-<UTC time>``, with its WAL), logged at ERROR, and a fresh spool is
started; ``corrupt_files_set_aside`` counts these (kept in the new file).

Beside the ``readings`` and ``control`` tables the file keeps counters (:data:`COUNTERS`) and
metadata in table ``meta``. :meth:`SpoolFile.tx` is one transaction after which the row counts
and counters held in memory agree with the file, whether it commits or rolls back. What the
rows mean, and who writes them when, is :class:`~edge_agent.outbox.spool.DiskOutbox`'s.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import structlog

__all__ = ["COUNTERS", "SCHEMA_VERSION", "SpoolError", "SpoolFile", "Synchronous", "spool_files"]

log = structlog.get_logger(__name__)

Synchronous = Literal["NORMAL", "FULL"]

SCHEMA_VERSION = 2
_CORRUPT_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_LOCKED_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, body BLOB NOT NULL, seq INTEGER);
CREATE TABLE IF NOT EXISTS control (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, kind TEXT NOT NULL,
    body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_SEQ_INDEX = "CREATE INDEX IF NOT EXISTS readings_seq ON readings (seq) WHERE seq IS NOT NULL"
COUNTERS = (
    "next_seq",
    "dropped_readings",
    "corrupt_files_set_aside",
    "corrupt_readings",
    "corrupt_control",
)


class SpoolError(Exception):
    """The spool cannot be used: locked by another process, unwritable, or closed."""


class _Corrupt(Exception):
    """The file is not a usable spool (internal: it is set aside)."""


def spool_files(path: Path) -> list[Path]:
    """The files of the spool at ``path``: the database, its WAL and its shared memory."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


class SpoolFile:
    """The open SQLite file of a spool (see the module docstring)."""

    def __init__(self, path: Path, *, synchronous: Synchronous, wal_bytes: int) -> None:
        self.path = path
        self.synchronous = synchronous
        self.wal_bytes = wal_bytes
        self.db = self._open_or_replace()
        self.page_size = self.pragma("page_size")
        counts = self.db.execute(
            "SELECT (SELECT count(*) FROM readings), (SELECT count(*) FROM control)"
        ).fetchone()
        #: Rows in each table, kept in step with the file by :meth:`tx`.
        self.disk_rows, self.control_rows = (int(c) for c in counts)
        #: The :data:`COUNTERS` as stored; :meth:`bump` changes one in memory and in the file.
        self.counters = {key: int(self.meta(key, 0)) for key in COUNTERS}

    @contextlib.contextmanager
    def tx(self) -> Iterator[None]:
        """One transaction; on failure the in-memory counts are restored with the file."""
        saved = (self.disk_rows, self.control_rows, dict(self.counters))
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            self.disk_rows, self.control_rows, self.counters = saved
            raise

    def bump(self, key: str, by: int) -> None:
        self.counters[key] += by
        self.set_meta(key, self.counters[key])

    def set_meta(self, key: str, value: int | str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str, default: Any) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def pragma(self, name: str) -> int:
        return int(self.db.execute(f"PRAGMA {name}").fetchone()[0])

    def query(self, sql: str, *args: int) -> int:
        """The first column of the first row of ``sql`` as an int; 0 if there is no row."""
        row = self.db.execute(sql, args).fetchone()
        return 0 if row is None else int(row[0])

    def bytes_used(self) -> int:
        """Bytes of the database holding data (free pages excluded; the WAL not counted)."""
        return (self.pragma("page_count") - self.pragma("freelist_count")) * self.page_size

    def close(self) -> None:
        self.db.close()

    # -- opening -----------------------------------------------------------------------------

    def _open_or_replace(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except _Corrupt as exc:
            aside = self._set_aside()
            log.error(
                "spool unreadable; set aside, starting a fresh one",
                path=str(self.path),
                moved_to=str(aside),
                error=str(exc),
            )
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('corrupt_files_set_aside', "
            "coalesce((SELECT value FROM meta WHERE key = 'corrupt_files_set_aside'), 0) + 1)"
        )
        db.execute("COMMIT")
        return db

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        try:
            self._prepare(db)
        except (_Corrupt, SpoolError):
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in _LOCKED_CODES:
                raise SpoolError(f"spool {self.path} is in use by another process") from exc
            if code in _CORRUPT_CODES or not isinstance(exc, sqlite3.OperationalError):
                raise _Corrupt(str(exc)) from exc
            raise SpoolError(f"cannot open spool {self.path}: {exc}") from exc
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA locking_mode = EXCLUSIVE")  # one process per spool
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"spool {self.path}: cannot use WAL mode (got {mode})")
        db.execute(f"PRAGMA synchronous = {self.synchronous}")
        db.execute(f"PRAGMA wal_autocheckpoint = {self.wal_bytes // 4096}")
        db.execute(f"PRAGMA journal_size_limit = {self.wal_bytes}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, 1, SCHEMA_VERSION):
            raise _Corrupt(f"unknown spool schema version {version}")
        check = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if check != "ok":
            raise _Corrupt(f"quick_check: {check}")
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        if version == 1:
            _migrate_v1(db)
        db.execute(_SEQ_INDEX)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for source in spool_files(self.path):
            if source.exists():
                suffix = source.name[len(self.path.name) :]
                source.rename(aside.with_name(aside.name + suffix))
        return aside


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 to 2: a reading names the batch it was handed out in (``seq``), instead of
    one batch range kept in ``meta``, so several sent batches can wait for the hub's
    acknowledgement."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(readings)")}
    if "seq" not in columns:
        db.execute("ALTER TABLE readings ADD COLUMN seq INTEGER")
    batch = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'batch_%'").fetchall())
    seq, lo, hi = (int(batch.get(k, -1)) for k in ("batch_seq", "batch_lo", "batch_hi"))
    if seq >= 0:
        db.execute("UPDATE readings SET seq = ? WHERE id BETWEEN ? AND ?", (seq, lo, hi))
    db.execute("DELETE FROM meta WHERE key IN ('batch_seq', 'batch_lo', 'batch_hi')")
