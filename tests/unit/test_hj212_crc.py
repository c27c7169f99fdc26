"""The HJ 212-2017 CRC (Appendix A) against the standard's example and its own C code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.hj212.crc import crc16, crc16_reference, format_crc

pytestmark = pytest.mark.unit

# HJ 212-2017, section 6.3.3 (通讯包示例) / Appendix A: the data segment of
# "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;
#  CP=&&RtdInterval=30&&1C80\r\n"
STANDARD_SEGMENT = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;"
    b"CP=&&RtdInterval=30&&"
)


def crc16_modbus(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_standard_example() -> None:
    assert len(STANDARD_SEGMENT) == 101
    assert format_crc(crc16(STANDARD_SEGMENT)) == "1C80"
    assert format_crc(crc16_reference(STANDARD_SEGMENT)) == "1C80"


def test_is_not_crc16_modbus() -> None:
    assert crc16_modbus(STANDARD_SEGMENT) != crc16(STANDARD_SEGMENT)


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        # third-party frames published by HJ 212 parser projects (public GitHub repositories),
        # checked here because they were produced by independent implementations
        (
            "QN=20230803171130538;ST=31;CN=2011;PW=123456;MN=88888880000001234567;Flag=5;"
            "CP=&&DataTime=20230803165500;w01001-Rtd=0.000,w01001-Flag=N;w21003-Rtd=0.000,"
            "w21003-Flag=N;w01018-Rtd=0.000,w01018-Flag=N;e01002-Rtd=0.000,e01002-Flag=N;"
            "w01010-Rtd=0.000,w01010-Flag=N;e01001-Rtd=0.000,e01001-Flag=N;w01003-Rtd=0.000,"
            "w01003-Flag=N;w21011-Rtd=0.000,w21011-Flag=N&&",
            "A141",
        ),
        ("", "FFFF"),
    ],
)
def test_known_values(segment: str, expected: str) -> None:
    assert format_crc(crc16(segment.encode())) == expected


@given(st.binary(max_size=300))
def test_table_matches_the_standards_c_code(data: bytes) -> None:
    assert crc16(data) == crc16_reference(data)
    assert 0 <= crc16(data) <= 0xFFFF


def test_format_is_four_upper_case_digits() -> None:
    assert format_crc(0x1C) == "001C"
    assert format_crc(0xABCD) == "ABCD"
