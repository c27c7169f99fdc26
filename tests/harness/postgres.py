"""PostgreSQL for tests: a reachable server, or a throw-away cluster of our own.

Selection (first match wins):

1. ``TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres:secret@db:5432/postgres``) -
   use that server; fail if it is unreachable.
2. ``TEST_POSTGRES_OWN_CLUSTER=1`` - always create an own cluster.
3. a local server on 127.0.0.1:5432 accepting user ``postgres`` without password.
4. an own cluster: ``initdb`` into a temp dir, then the ``postgres`` postmaster on a
   free port, trust auth, fsync off. As root it runs as the ``postgres`` system user
   (PostgreSQL refuses to run as root) via ``setpriv`` (which execs, so the postmaster
   stays our direct child), in a directory outside pytest's 0700 root-owned temp tree
   so that user can reach it.

   The postmaster runs in the foreground under :class:`ManagedProcess` instead of
   ``pg_ctl start``: ``pg_ctl`` daemonizes, so the postmaster is re-parented to PID 1,
   and an init that does not reap (containers, some CI sandboxes) leaves zombies.

Tests get fresh databases from ``create_database()``; they never share one.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit

import asyncpg

from .ports import LOCALHOST, can_connect, free_port
from .process import (
    BinaryNotFoundError,
    HarnessError,
    ManagedProcess,
    ServerStartError,
    tail,
)

DEBIAN_PACKAGE = "postgresql"
ENV_URL = "TEST_POSTGRES_URL"
ENV_OWN_CLUSTER = "TEST_POSTGRES_OWN_CLUSTER"
LOCAL_PORT = 5432
SUPERUSER = "postgres"
_START_ATTEMPTS = 4
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run a coroutine to completion on a private event loop in a helper thread,
    so it works from sync code and from inside a running event loop alike."""
    result: list[T] = []
    error: list[BaseException] = []

    async def main() -> T:
        return await factory()

    def target() -> None:
        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="pg-harness", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise HarnessError(f"PostgreSQL admin operation did not finish within {timeout}s")
    if error:
        raise error[0]
    return result[0]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def own_cluster_forced() -> bool:
    """True if ``TEST_POSTGRES_OWN_CLUSTER`` asks for an own cluster (and no URL is forced)."""
    return _env_flag(ENV_OWN_CLUSTER) and not os.environ.get(ENV_URL, "").strip()


def _check_ident(name: str) -> str:
    if not _IDENT_RE.match(name):
        raise HarnessError(f"database name must match {_IDENT_RE.pattern}: {name!r}")
    return name


def _find_pg_bindir() -> Path:
    versioned = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    if versioned:
        return versioned[0].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise BinaryNotFoundError(
        "PostgreSQL server binaries (`initdb`, `pg_ctl`) not found in /usr/lib/postgresql/*/bin "
        f"or on PATH. Install the Debian package `{DEBIAN_PACKAGE}` "
        f"(apt-get install {DEBIAN_PACKAGE}); scripts/test.sh installs it for you."
    )


def _others_can_traverse(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True


async def _can_login(dsn: str, connect_timeout: float) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return True


class PostgresServer:
    """See module docstring. Call ``start()`` first, ``close()`` at the end."""

    def __init__(self, tmp_dir: Path, *, start_timeout: float = 60.0) -> None:
        self.dir = Path(tmp_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start_timeout = start_timeout
        self.host = LOCALHOST
        self.port = LOCAL_PORT
        self.user = SUPERUSER
        self.password: str | None = None
        self.maintenance_db = "postgres"
        self.is_own_cluster = False
        self.source = "not started"
        self._external_ready = False
        # own-cluster state
        self._cluster_dir: Path | None = None
        self._remove_cluster_dir = False
        self._bindir: Path | None = None
        self._run_as: list[str] = []
        self._started_once = False
        self._process: ManagedProcess | None = None

    # -- URLs --------------------------------------------------------------------
    def _netloc(self) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"{auth}@{self.host}:{self.port}"

    def dsn(self, database: str | None = None) -> str:
        """Plain libpq/asyncpg DSN: ``postgresql://postgres@127.0.0.1:PORT/db``."""
        return f"postgresql://{self._netloc()}/{database or self.maintenance_db}"

    def url(self, database: str) -> str:
        """SQLAlchemy async URL: ``postgresql+asyncpg://postgres@127.0.0.1:PORT/db``."""
        return f"postgresql+asyncpg://{self._netloc()}/{database}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn(self.maintenance_db)

    @property
    def running(self) -> bool:
        if self._process is not None:
            return self._process.running
        return self._external_ready

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Pick the server (see module docstring) and make sure it accepts logins."""
        if self.running:
            return
        if self.is_own_cluster:  # restart of our own cluster: same port, same data
            self._start_postmaster()
            return
        env_url = os.environ.get(ENV_URL, "").strip()
        if env_url:
            self._use_url(env_url)
            if not run_sync(lambda: _can_login(self.admin_dsn, 5.0)):
                raise HarnessError(
                    f"{ENV_URL}={env_url!r}: cannot log in to that server as {self.user!r}"
                )
            self.source = ENV_URL
            self._external_ready = True
            return
        if not _env_flag(ENV_OWN_CLUSTER):
            local = f"postgresql://{SUPERUSER}@{LOCALHOST}:{LOCAL_PORT}/postgres"
            if run_sync(lambda: _can_login(local, 2.0)):
                self.source = f"local server {LOCALHOST}:{LOCAL_PORT}"
                self._external_ready = True
                return
        self._init_own_cluster()
        self._start_postmaster()

    def _use_url(self, url: str) -> None:
        parts = urlsplit(url)
        if not parts.scheme.startswith("postgres"):
            raise HarnessError(f"{ENV_URL} must be a postgresql:// URL, got {url!r}")
        self.host = parts.hostname or LOCALHOST
        self.port = parts.port or LOCAL_PORT
        self.user = unquote(parts.username) if parts.username else SUPERUSER
        self.password = unquote(parts.password) if parts.password else None
        self.maintenance_db = parts.path.lstrip("/") or "postgres"

    def stop(self) -> None:
        """Own cluster: fast shutdown (SIGINT), same port and data on the next ``start()``.
        External server: only forgets it."""
        if self._process is not None:
            self._process.stop()
        self._external_ready = False

    def kill(self) -> None:
        """Own cluster: immediate shutdown (SIGQUIT; crash recovery on next start).
        Not SIGKILL: that would orphan the backends instead of letting the postmaster
        reap them."""
        if self._process is not None:
            self._process.stop(sig=signal.SIGQUIT)
        self._external_ready = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop; remove an own cluster's directory if it lives outside ``tmp_dir``."""
        try:
            self.stop()
        finally:
            if self._remove_cluster_dir and self._cluster_dir is not None:
                shutil.rmtree(self._cluster_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        if self._process is None:
            return f"<{self.source}: no log>"
        return self._process.log_tail(lines)

    # -- own cluster ---------------------------------------------------------------
    def _init_own_cluster(self) -> None:
        self._bindir = _find_pg_bindir()
        for tool in ("initdb", "postgres"):
            if not (self._bindir / tool).exists():
                raise BinaryNotFoundError(
                    f"{self._bindir / tool} missing. Install the Debian package "
                    f"`{DEBIAN_PACKAGE}`; scripts/test.sh installs it for you."
                )
        base = self.dir / "pg"
        if os.geteuid() == 0:
            base = self._prepare_as_root()
        else:
            base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o700)
        self._cluster_dir = base
        self.is_own_cluster = True
        self.host, self.user, self.password = LOCALHOST, SUPERUSER, None
        self.maintenance_db = "postgres"
        self.port = free_port()
        self.source = f"own cluster in {base}"
        log = self.dir / "initdb.log"
        cmd = [
            *self._run_as,
            str(self._bindir / "initdb"),
            "-D", str(self._data_dir),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        with log.open("ab") as out:
            try:
                proc = subprocess.run(  # noqa: PLW1510 - checked below, with the log
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=base,
                    timeout=self.start_timeout,
                )
            except subprocess.TimeoutExpired:
                raise ServerStartError(f"initdb timed out\n{tail(log)}") from None
        if proc.returncode != 0:
            raise ServerStartError(
                f"initdb failed (exit code {proc.returncode}): {' '.join(cmd)}\n"
                f"--- tail of {log} ---\n{tail(log)}"
            )

    def _prepare_as_root(self) -> Path:
        try:
            pw = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise HarnessError(
                "Running as root: PostgreSQL refuses to run as root and the system user "
                f"`{SUPERUSER}` (normally created by the Debian package `{DEBIAN_PACKAGE}`) "
                "does not exist. Install the package (scripts/test.sh does) or create the "
                "user: `adduser --system --group --home /var/lib/postgresql postgres`."
            ) from None
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        if not os.access(setpriv, os.X_OK):
            raise BinaryNotFoundError("`setpriv` not found (Debian package `util-linux`)")
        self._run_as = [
            setpriv,
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--init-groups",
            "--",
        ]
        if _others_can_traverse(self.dir):
            base = self.dir / "pg"
            base.mkdir(parents=True, exist_ok=True)
        else:
            # pytest's temp dirs are 0700 root: the postgres user cannot reach them.
            tmp_root = Path(tempfile.gettempdir())
            if not _others_can_traverse(tmp_root):
                tmp_root = Path("/tmp")
            base = Path(tempfile.mkdtemp(prefix="pytest-pg-", dir=tmp_root))
            self._remove_cluster_dir = True
            (self.dir / "postgres-cluster-location.txt").write_text(f"{base}\n")
        for path in [base, *base.rglob("*")]:
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return base

    @property
    def _data_dir(self) -> Path:
        assert self._cluster_dir is not None
        return self._cluster_dir / "data"

    def _make_process(self) -> ManagedProcess:
        assert self._bindir is not None
        assert self._cluster_dir is not None
        argv = [
            *self._run_as,
            str(self._bindir / "postgres"),
            "-D", str(self._data_dir),
            "-p", str(self.port),
            # short path: unix socket paths are limited to ~107 bytes
            "-k", str(self._cluster_dir),
            "-c", f"listen_addresses={LOCALHOST}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=300",
        ]  # fmt: skip
        return ManagedProcess(
            "postgres",
            argv,
            log_path=self.dir / "postgres.log",
            ready=self._ready,
            cwd=self._cluster_dir,
            start_timeout=self.start_timeout,
            stop_signal=signal.SIGINT,  # "fast" shutdown; SIGTERM would wait for clients
        )

    def _ready(self) -> bool:
        return can_connect(self.host, self.port, timeout=0.5) and run_sync(
            lambda: _can_login(self.admin_dsn, 2.0)
        )

    def _start_postmaster(self) -> None:
        attempts = 1 if self._started_once else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._process = self._make_process()
            try:
                self._process.start()
            except ServerStartError as exc:
                if exc.address_in_use and attempt < attempts:
                    self.port = free_port()
                    continue
                raise
            self._started_once = True
            return

    # -- databases -----------------------------------------------------------------
    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (default: unique ``test_<hex>``); return its SQLAlchemy URL."""
        name = _check_ident(name or f"test_{uuid.uuid4().hex[:16]}")

        async def create() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        run_sync(create)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting leftover sessions (``WITH (FORCE)``)."""
        name = _check_ident(name)

        async def drop() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        run_sync(drop)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self.port} ({self.source})>"


def database_name_from_url(url: str) -> str:
    """The database part of a URL made by :meth:`PostgresServer.url`."""
    return urlsplit(url).path.lstrip("/")
