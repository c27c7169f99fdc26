"""Integration-test harness: private Mosquitto, InfluxDB and PostgreSQL servers."""

from .influxdb import InfluxDatabase, InfluxdbServer
from .mosquitto import MosquittoServer, mqtt_connack_probe
from .ports import LOCALHOST, can_connect, free_port, port_is_free, wait_port_closed
from .postgres import PostgresServer, database_name_from_url, run_sync
from .process import (
    BinaryNotFoundError,
    HarnessError,
    ManagedProcess,
    ServerStartError,
    find_binary,
    sigterm_as_keyboard_interrupt,
)

__all__ = [
    "LOCALHOST",
    "BinaryNotFoundError",
    "HarnessError",
    "InfluxDatabase",
    "InfluxdbServer",
    "ManagedProcess",
    "MosquittoServer",
    "PostgresServer",
    "ServerStartError",
    "can_connect",
    "database_name_from_url",
    "find_binary",
    "free_port",
    "mqtt_connack_probe",
    "port_is_free",
    "run_sync",
    "sigterm_as_keyboard_interrupt",
    "wait_port_closed",
]
