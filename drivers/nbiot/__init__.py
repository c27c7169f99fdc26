"""NB-IoT modem driver: AT commands (Quectel BC95/BC28 style) over a serial port, giving the
agent a UDP datagram transport (CoAP is built above it) and the modem's network status.

:mod:`drivers.nbiot.at` is the AT engine (line sorting, one command in flight, URCs) and its
serial binding; :mod:`drivers.nbiot.modem` the modem (:class:`NbIotModem`, :class:`UdpSocket`);
:mod:`drivers.nbiot.settings` its settings. Errors are :class:`~drivers.errors.DriverError`::

    AtTimeout(DriverTimeout)        no final result code in time
    AtCommandError(DeviceException) ERROR / +CME ERROR: n (.cme_code)
    ModemGone(ConnectError)         the port is gone (unplugged) or closed
    ModemRestarted(ConnectError)    the modem rebooted during the command
    SocketClosed(ConnectError)      the socket was closed, or lost in a modem reboot
"""

from drivers.nbiot.at import (
    AtCommandError,
    AtEngine,
    AtResponse,
    AtTimeout,
    ModemGone,
    ModemRestarted,
    SerialAtPort,
    Subscription,
    Urc,
)
from drivers.nbiot.modem import (
    Datagram,
    ModemDisconnected,
    ModemEvent,
    ModemRebooted,
    ModemReconnected,
    NbIotModem,
    NetworkStatus,
    PowerSavingChanged,
    RegistrationChanged,
    SocketClosed,
    UdpSocket,
)
from drivers.nbiot.settings import NbIotModemSettings

__all__ = [
    "AtCommandError",
    "AtEngine",
    "AtResponse",
    "AtTimeout",
    "Datagram",
    "ModemDisconnected",
    "ModemEvent",
    "ModemGone",
    "ModemRebooted",
    "ModemReconnected",
    "ModemRestarted",
    "NbIotModem",
    "NbIotModemSettings",
    "NetworkStatus",
    "PowerSavingChanged",
    "RegistrationChanged",
    "SerialAtPort",
    "SocketClosed",
    "Subscription",
    "UdpSocket",
    "Urc",
]
