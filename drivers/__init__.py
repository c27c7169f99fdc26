"""Drivers: connect to a field device, read points, write a point - raw values only.

The agent picks a driver with :func:`open_driver` from a device's profile and its
:data:`ConnectionSettings`; every failure is a :class:`DriverError` (see
:mod:`drivers.errors` for the tree). :class:`FakeDriver` stands in for a device in tests.
"""

from drivers.base import Driver
from drivers.coap import CoapDeviceException, CoapDriver
from drivers.errors import (
    ConfigurationError,
    ConnectError,
    DeviceException,
    DriverError,
    DriverTimeout,
    EncodeError,
    ProtocolError,
    UnexpectedDriverError,
)
from drivers.factory import open_driver
from drivers.fake import FakeDriver, FakeWrite
from drivers.hj212 import Hj212Driver, Hj212Error
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.tcp import ModbusTcpDriver
from drivers.serial_ports import SerialPortIdentity, SerialPortNotFound, resolve_serial_port
from drivers.settings import (
    CoapSettings,
    ConnectionSettings,
    Hj212SerialSettings,
    Hj212TcpSettings,
    ModbusRtuSettings,
    ModbusTcpSettings,
)

__all__ = [
    "CoapDeviceException",
    "CoapDriver",
    "CoapSettings",
    "ConfigurationError",
    "ConnectError",
    "ConnectionSettings",
    "DeviceException",
    "Driver",
    "DriverError",
    "DriverTimeout",
    "EncodeError",
    "FakeDriver",
    "FakeWrite",
    "Hj212Driver",
    "Hj212Error",
    "Hj212SerialSettings",
    "Hj212TcpSettings",
    "ModbusRtuDriver",
    "ModbusRtuSettings",
    "ModbusTcpDriver",
    "ModbusTcpSettings",
    "ProtocolError",
    "SerialPortIdentity",
    "SerialPortNotFound",
    "UnexpectedDriverError",
    "open_driver",
    "resolve_serial_port",
]
