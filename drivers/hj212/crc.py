"""The CRC of HJ 212-2017 (Appendix A): a CRC-16 variant, *not* CRC-16/MODBUS.

The standard's C code (``CRC16_Checkout``) starts from ``0xFFFF`` and for each byte of the data
segment does ``crc = (crc >> 8) ^ byte`` and then eight shift-right steps, XOR-ing ``0xA001``
when the bit shifted out is 1. Because ``crc >> 8`` clears the high byte, the register entering
the eight steps is only 8 bits wide: the low byte of the previous value is discarded. That is
what makes it differ from CRC-16/MODBUS (which XORs the byte into the *low* byte and keeps the
rest). The 256-entry table below is those eight steps precomputed, so each byte costs one lookup.

Checked against the standard's example frame (section 6.3.3)::

    >>> "%04X" % crc16(b"QN=20160801085857223;ST=32;CN=1062;PW=100000;"
    ...                b"MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&")
    '1C80'

The CRC is sent as four upper-case hexadecimal digits; receivers accept either case.
"""

from __future__ import annotations

__all__ = ["crc16", "crc16_reference", "format_crc"]

_POLY = 0xA001


def _eight_steps(value: int) -> int:
    for _ in range(8):
        carry = value & 1
        value >>= 1
        if carry:
            value ^= _POLY
    return value


_TABLE = tuple(_eight_steps(i) for i in range(256))


def crc16(data: bytes) -> int:
    """The HJ 212-2017 CRC of ``data`` (the data segment, without ``##``, length and CRLF)."""
    crc = 0xFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc >> 8) ^ byte]
    return crc


def crc16_reference(data: bytes) -> int:
    """A line-by-line transcription of the standard's C code (slow; for tests)."""
    crc_reg = 0xFFFF
    for byte in data:
        crc_reg = (crc_reg >> 8) ^ byte
        for _ in range(8):
            check = crc_reg & 0x0001
            crc_reg >>= 1
            if check == 0x0001:
                crc_reg ^= _POLY
    return crc_reg


def format_crc(value: int) -> str:
    """Four upper-case hexadecimal digits, as the CRC is sent."""
    return f"{value:04X}"
