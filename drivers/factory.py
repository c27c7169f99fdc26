"""Make the driver a device's connection settings call for."""

from __future__ import annotations

from device_profiles import DeviceProfile
from drivers.base import Driver
from drivers.coap.driver import CoapDriver
from drivers.errors import ConfigurationError
from drivers.hj212 import Hj212Driver
from drivers.modbus.rtu import ModbusRtuDriver
from drivers.modbus.tcp import ModbusTcpDriver
from drivers.settings import (
    CoapSettings,
    ConnectionSettings,
    Hj212SerialSettings,
    Hj212TcpSettings,
    ModbusRtuSettings,
    ModbusTcpSettings,
)

__all__ = ["open_driver"]


def open_driver(profile: DeviceProfile, settings: ConnectionSettings) -> Driver:
    """A new, unconnected driver for a device of ``profile`` reached through ``settings``.

    Use it as ``async with open_driver(profile, settings) as driver: ...``.
    """
    if isinstance(settings, ModbusTcpSettings):
        if profile.transport != "modbus":
            raise ConfigurationError(
                f"profile '{profile.name}' speaks {profile.transport}, not Modbus TCP"
            )
        return ModbusTcpDriver(profile, settings)
    if isinstance(settings, ModbusRtuSettings):
        if profile.transport != "modbus":
            raise ConfigurationError(
                f"profile '{profile.name}' speaks {profile.transport}, not Modbus RTU"
            )
        return ModbusRtuDriver(profile, settings)
    if isinstance(settings, CoapSettings):
        if profile.transport != "coap":
            raise ConfigurationError(
                f"profile '{profile.name}' speaks {profile.transport}, not CoAP"
            )
        return CoapDriver(profile, settings)
    if isinstance(settings, Hj212SerialSettings | Hj212TcpSettings):
        if profile.transport != "hj212":
            raise ConfigurationError(
                f"profile '{profile.name}' speaks {profile.transport}, not HJ 212"
            )
        return Hj212Driver(profile, settings)
    raise ConfigurationError(f"no driver for settings {settings!r}")  # pragma: no cover
