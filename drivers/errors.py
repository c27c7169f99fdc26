"""The errors every driver raises: one tree, whatever the transport.

::

    DriverError                     base of everything a driver raises
    ├── ConnectError                the device cannot be reached (refused, unreachable, lost)
    ├── DriverTimeout               the device did not answer in time
    ├── DeviceException             the device answered with a Modbus exception (code, function)
    ├── ProtocolError               the answer is malformed or not the one asked for
    ├── EncodeError                 a raw value cannot be put on the wire for its point
    ├── ConfigurationError          the driver was asked something its profile does not allow
    │                               (unknown point, write to a read-only point, wrong transport)
    └── UnexpectedDriverError       any other exception raised inside a driver (a library's
                                    error not foreseen, a bug), wrapped at the driver boundary

The first four describe the device or the link and are what a poller retries or reports as
"unavailable"; the next two are the caller's mistakes. Third-party exceptions (pymodbus,
``OSError``, ``termios.error``) are translated where they occur, with ``raise ... from exc``;
whatever escapes that is wrapped by :class:`~drivers.base.Driver` as
:class:`UnexpectedDriverError` (the original is its ``__cause__``), so nothing else ever leaks
out of a driver.
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
    "UnexpectedDriverError",
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


class UnexpectedDriverError(DriverError):
    """An exception no transport translated (a bug, or a library error not foreseen).

    ``action`` is what the driver was doing (``read``, ``write dimming``, ``connect``) and
    ``original`` the exception, also chained as ``__cause__``. The device is treated as
    unavailable, like after a :class:`ConnectError`.
    """

    def __init__(self, endpoint: str, action: str, original: Exception) -> None:
        self.endpoint = endpoint
        self.action = action
        self.original = original
        detail = str(original) or repr(original)
        super().__init__(f"{endpoint}: {action} failed: {type(original).__name__}: {detail}")
