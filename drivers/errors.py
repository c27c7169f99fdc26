"""The errors every driver raises: one tree, whatever the transport.

::

    DriverError                     base of everything a driver raises
    ├── ConnectError                the device cannot be reached (refused, unreachable, lost)
    ├── DriverTimeout               the device did not answer in time
    ├── DeviceException             the device answered with a Modbus exception (code, function)
    ├── ProtocolError               the answer is malformed or not the one asked for
    ├── EncodeError                 a raw value cannot be put on the wire for its point
    └── ConfigurationError          the driver was asked something its profile does not allow
                                    (unknown point, write to a read-only point, wrong transport)

The first four describe the device or the link and are what a poller retries or reports as
"unavailable"; the last two are the caller's mistakes. Third-party exceptions (pymodbus,
``OSError``) are translated where they occur, with ``raise ... from exc``, and never leak.
"""

from __future__ import annotations

__all__ = [
    "MODBUS_EXCEPTION_NAMES",
    "ConfigurationError",
    "ConnectError",
    "DeviceException",
    "DriverError",
    "DriverTimeout",
    "EncodeError",
    "ProtocolError",
]

#: Names of the Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
MODBUS_EXCEPTION_NAMES: dict[int, str] = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    7: "NEGATIVE ACKNOWLEDGE",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


class DriverError(Exception):
    """Base class of every error a driver raises."""


class ConnectError(DriverError):
    """The device cannot be reached: connection refused, unreachable, or lost."""


class DriverTimeout(DriverError):
    """The device did not answer within the configured timeout (after the retries)."""


class DeviceException(DriverError):
    """The device answered a request with a Modbus exception response.

    ``code`` is the exception code (2 = ILLEGAL DATA ADDRESS, ...), ``function`` the function
    code of the refused request (without the 0x80 error bit).
    """

    def __init__(self, code: int, function: int, detail: str = "") -> None:
        self.code = code
        self.function = function
        self.detail = detail
        message = f"device refused function {function} with exception {code} ({self.name})"
        super().__init__(f"{message}: {detail}" if detail else message)

    @property
    def name(self) -> str:
        """Readable name of the exception code, e.g. ``ILLEGAL DATA ADDRESS``."""
        return MODBUS_EXCEPTION_NAMES.get(self.code, f"UNKNOWN EXCEPTION {self.code}")


class ProtocolError(DriverError):
    """The device's answer is malformed or does not match the request."""


class EncodeError(DriverError, ValueError):
    """A raw value cannot be encoded for its point (wrong type, out of range, too long)."""


class ConfigurationError(DriverError):
    """The request does not fit the driver's profile or settings (a caller's mistake)."""
