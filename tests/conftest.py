"""Shared fixtures. Server logic lives in tests/harness; this file only wires it up.

Servers are private instances on free 127.0.0.1 ports (never the system Mosquitto on
1883). A missing server binary makes the fixture *fail* (not skip) with the Debian
package to install - scripts/test.sh installs them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.async_api import Browser, async_playwright

from tests.harness import (
    HarnessError,
    InfluxDatabase,
    InfluxdbServer,
    MosquittoServer,
    PostgresServer,
    database_name_from_url,
    sigterm_as_keyboard_interrupt,
)
from tests.harness.browser import CHROMIUM
from tests.harness.process import kill_leftovers
from tests.harness.threads import exit_past_stuck_threads

S = TypeVar("S", MosquittoServer, InfluxdbServer, PostgresServer)


def _started(make: Callable[[], S]) -> S:
    """Build and start a server; harness errors become clean test failures
    (never skips): missing binary -> which Debian package to install; start failure
    -> the server's log tail."""
    server: S | None = None
    try:
        server = make()
        server.start()
    except HarnessError as exc:
        error = str(exc)
    else:
        return server
    if server is not None:
        server.stop()
    pytest.fail(error, pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    sigterm_as_keyboard_interrupt()  # a cancelled CI job still tears servers down


EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # After the summary: a leaked non-daemon thread must not hold the process (and CI) open.
    exit_past_stuck_threads(config.stash.get(EXIT_STATUS, 0), before_exit=kill_leftovers)


# -- MQTT ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """Broker shared by the whole session. Do not stop it - use ``mosquitto_private``."""
    server = _started(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto")))
    yield server
    server.stop()


@pytest.fixture
def mosquitto_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoServer]:
    """A broker of this test's own: stop/kill/restart it freely (same port each time)."""
    server = _started(lambda: MosquittoServer(tmp_path_factory.mktemp("mosquitto-private")))
    yield server
    server.stop()


@pytest.fixture
def mosquitto_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., MosquittoServer]]:
    """``make(extra_config="", **MosquittoServer kwargs) -> started MosquittoServer``,
    e.g. for the dynamic-security plugin. All are stopped after the test."""
    servers: list[MosquittoServer] = []

    def make(extra_config: str = "", **kwargs: Any) -> MosquittoServer:
        tmp = tmp_path_factory.mktemp("mosquitto-custom")
        server = _started(lambda: MosquittoServer(tmp, extra_config=extra_config, **kwargs))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def private_mosquitto(mosquitto_factory: Callable[..., MosquittoServer]) -> MosquittoServer:
    """A Mosquitto of this test alone: no retained birth message of another test's agent
    registers agents and devices in this test's hub (for tests that count them)."""
    return mosquitto_factory()


# -- InfluxDB -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxdbServer]:
    """InfluxDB 1.x shared by the session; tests use their own ``influx_db`` database."""
    server = _started(lambda: InfluxdbServer(tmp_path_factory.mktemp("influxdb")))
    yield server
    server.stop()


@pytest.fixture
def influx_db(influxdb: InfluxdbServer, unique_id: str) -> Iterator[InfluxDatabase]:
    """A fresh database on the session server (``.url``, ``.name``), dropped afterwards."""
    name = f"test_{unique_id}"
    influxdb.create_database(name)
    yield InfluxDatabase(influxdb, name)
    if influxdb.running:
        influxdb.drop_database(name)


@pytest.fixture
def influxdb_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxdbServer]:
    """An InfluxDB of this test's own: stop/kill/restart it freely (same URL, data kept)."""
    server = _started(lambda: InfluxdbServer(tmp_path_factory.mktemp("influxdb-private")))
    yield server
    server.stop()


# -- PostgreSQL ---------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """Local server on 5432 if usable, else an own cluster (see tests/harness/postgres.py)."""
    server = _started(lambda: PostgresServer(tmp_path_factory.mktemp("postgres")))
    yield server
    server.close()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """``postgresql+asyncpg://postgres@127.0.0.1:PORT/test_<hex>`` - a fresh database,
    dropped (sessions force-closed) afterwards."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(database_name_from_url(url))


# -- misc ---------------------------------------------------------------------------
@pytest.fixture
def unique_id() -> str:
    """Short unique string for topics, client ids, agent ids, database names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def dynsec_broker(mosquitto_factory: Callable[..., MosquittoServer], tmp_path: Path) -> Any:
    """A private Mosquitto with the dynamic-security plugin (``tests.harness.dynsec.Broker``)."""
    from tests.harness.dynsec import start_dynsec_broker  # noqa: PLC0415 - imports the hub

    return await start_dynsec_broker(mosquitto_factory, tmp_path)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where a browser test saves its screenshots: ``$CONSOLE_SCREENSHOTS`` (default: the
    test's temporary directory)."""
    path = Path(os.environ.get("CONSOLE_SCREENSHOTS", tmp_path / "screens"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium (``/usr/bin/chromium``), headless, driven by Playwright."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()
