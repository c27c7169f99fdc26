"""The harness fixtures start real servers that work, and survive stop/start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import paho.mqtt.client as mqtt
import pytest

from tests.harness import (
    BinaryNotFoundError,
    InfluxDatabase,
    InfluxdbServer,
    MosquittoServer,
    PostgresServer,
    can_connect,
    find_binary,
)
from tests.harness.postgres import ENV_OWN_CLUSTER, database_name_from_url, own_cluster_forced

pytestmark = pytest.mark.integration

WAIT = 10.0


def _gone(pid: int | None) -> bool:
    """The process is neither running nor a zombie (a zombie still has /proc/<pid>)."""
    return pid is not None and not Path(f"/proc/{pid}").exists()


class Mqtt:
    """Minimal synchronous paho-mqtt 2.x wrapper for these tests."""

    def __init__(self, server: MosquittoServer, client_id: str, *, clean_session: bool) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.server = server
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.got_message = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _c, _u, flags, reason_code, _p) -> None:
        if not reason_code.is_failure:
            self.session_present = bool(flags.session_present)
            self.connected.set()

    def _on_subscribe(self, _c, _u, _mid, _codes, _p) -> None:
        self.subscribed.set()

    def _on_message(self, _c, _u, message) -> None:
        self.messages.append(message)
        self.got_message.set()

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)
        assert info.is_published(), "no PUBACK"


@contextmanager
def mqtt_client(
    server: MosquittoServer, client_id: str, *, clean_session: bool = True
) -> Iterator[Mqtt]:
    c = Mqtt(server, client_id, clean_session=clean_session)
    c.client.connect(server.host, server.port, keepalive=30)
    c.client.loop_start()
    try:
        assert c.connected.wait(WAIT), f"no CONNACK from {server.url}"
        yield c
    finally:
        c.client.disconnect()
        c.client.loop_stop()


# -- Mosquitto ----------------------------------------------------------------------
def test_mosquitto_publish_subscribe_round_trip(mosquitto: MosquittoServer, unique_id: str):
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert mosquitto.port != 1883
    topic = f"test/{unique_id}/roundtrip"
    with (
        mqtt_client(mosquitto, f"sub-{unique_id}") as sub,
        mqtt_client(mosquitto, f"pub-{unique_id}") as pub,
    ):
        sub.subscribe(topic)
        pub.publish(topic, b"hello")
        assert sub.got_message.wait(WAIT)
    assert [(m.topic, m.payload, m.qos) for m in sub.messages] == [(topic, b"hello", 1)]


def test_mosquitto_restart_keeps_port_and_persistent_session(
    mosquitto_private: MosquittoServer, unique_id: str
):
    broker = mosquitto_private
    topic = f"test/{unique_id}/queued"
    sub_id = f"sub-{unique_id}"
    with mqtt_client(broker, sub_id, clean_session=False) as sub:
        sub.subscribe(topic)
    with mqtt_client(broker, f"pub-{unique_id}") as pub:  # subscriber offline: gets queued
        pub.publish(topic, b"while-you-were-away")

    port, url, old_pid = broker.port, broker.url, broker.pid
    broker.stop()
    assert _gone(old_pid)
    assert not can_connect(broker.host, port)
    broker.start()
    assert (broker.port, broker.url) == (port, url)

    with mqtt_client(broker, sub_id, clean_session=False) as sub:
        assert sub.session_present is True
        assert sub.got_message.wait(WAIT), "queued QoS1 message lost across restart"
    assert [m.payload for m in sub.messages] == [b"while-you-were-away"]


def test_mosquitto_kill_and_start_same_port(mosquitto_private: MosquittoServer):
    port, pid = mosquitto_private.port, mosquitto_private.pid
    mosquitto_private.save()
    mosquitto_private.kill()
    assert _gone(pid)
    mosquitto_private.start()
    assert mosquitto_private.port == port
    assert mosquitto_private.running


# -- InfluxDB -----------------------------------------------------------------------
def test_influx_write_and_query(influx_db: InfluxDatabase, influxdb: InfluxdbServer):
    assert influx_db.url == influxdb.url
    assert influx_db.name in influxdb.databases()
    influx_db.write(["air,sensor=s1 pm25=12.5 1000000000", "air,sensor=s2 pm25=7 2000000000"])
    body = influx_db.query("SELECT pm25, sensor FROM air ORDER BY time", epoch="s")
    assert body["results"][0]["series"][0]["values"] == [[1, 12.5, "s1"], [2, 7.0, "s2"]]


def test_influx_private_stop_start_keeps_url_and_data(influxdb_private: InfluxdbServer):
    server = influxdb_private
    server.create_database("keep")
    server.write("keep", "m v=1i 1000000000")
    url, pid = server.url, server.pid
    server.stop()
    assert _gone(pid)
    assert not can_connect(server.host, server.port)
    server.start()
    assert server.url == url
    assert server.wait_for_points("keep", "SELECT v FROM m", 1) == [["1970-01-01T00:00:01Z", 1]]


# -- PostgreSQL ---------------------------------------------------------------------
async def test_postgres_fresh_database(pg_url: str, postgres: PostgresServer):
    name = database_name_from_url(pg_url)
    assert name.startswith("test_")
    assert pg_url == postgres.url(name)
    assert pg_url.startswith("postgresql+asyncpg://")
    conn = await asyncpg.connect(postgres.dsn(name))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == name
    finally:
        await conn.close()


@pytest.mark.skipif(
    not own_cluster_forced(),
    reason=f"own-cluster path: run with {ENV_OWN_CLUSTER}=1",
)
async def test_postgres_own_cluster_restart_keeps_port_and_data(
    postgres: PostgresServer, unique_id: str
):
    assert postgres.is_own_cluster
    name = f"keep_{unique_id}"
    url = postgres.create_database(name)
    port = postgres.port
    postgres.restart()
    assert postgres.port == port
    conn = await asyncpg.connect(postgres.dsn(name))
    try:
        assert await conn.fetchval("SELECT current_database()") == name
    finally:
        await conn.close()
    postgres.drop_database(name)
    assert url.endswith(f":{port}/{name}")


# -- missing binaries ---------------------------------------------------------------
def test_missing_binary_message_names_package_and_script():
    with pytest.raises(BinaryNotFoundError) as err:
        find_binary("no-such-server-binary", "no-such-package", ["/nonexistent/bin/x"])
    text = str(err.value)
    assert "apt-get install no-such-package" in text
    assert "scripts/test.sh" in text
