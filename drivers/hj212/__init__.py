"""HJ 212-2017 (污染物在线监控(监测)系统数据传输标准): codec, session and driver.

* :mod:`drivers.hj212.crc` - the standard's own CRC-16 (Appendix A);
* :mod:`drivers.hj212.codec` - frames, CP data, and the :class:`Hj212Error` tree;
* :mod:`drivers.hj212.messages` - typed messages (2011/2051/2061/2031 data, 9011-9014
  answers, 1011/1012 time, history requests);
* :mod:`drivers.hj212.session` - framing of a byte stream, split packets, answers, retries;
* :mod:`drivers.hj212.driver` - :class:`Hj212Driver` over a serial line or TCP.
"""

from drivers.hj212.codec import (
    DATA_FLAGS,
    AckTimeout,
    CommandRefused,
    CpData,
    CrcMismatch,
    FieldError,
    Frame,
    FrameError,
    GarbageError,
    Hj212Error,
    LengthMismatch,
    decode_frame,
    encode_frame,
    parse_cp,
    split_frame,
)
from drivers.hj212.crc import crc16
from drivers.hj212.driver import Hj212Driver, Reading
from drivers.hj212.messages import DataUpload, Message, Pollutant, parse_message
from drivers.hj212.session import FdLink, FrameReassembler, Hj212Session, StreamLink
from drivers.hj212.settings import Hj212SerialSettings, Hj212TcpSettings

__all__ = [
    "DATA_FLAGS",
    "AckTimeout",
    "CommandRefused",
    "CpData",
    "CrcMismatch",
    "DataUpload",
    "FdLink",
    "FieldError",
    "Frame",
    "FrameError",
    "FrameReassembler",
    "GarbageError",
    "Hj212Driver",
    "Hj212Error",
    "Hj212SerialSettings",
    "Hj212Session",
    "Hj212TcpSettings",
    "LengthMismatch",
    "Message",
    "Pollutant",
    "Reading",
    "StreamLink",
    "crc16",
    "decode_frame",
    "encode_frame",
    "parse_cp",
    "parse_message",
    "split_frame",
]
