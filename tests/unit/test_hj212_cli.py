"""``iotctl hj212 decode / encode`` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from iotctl.hj212_cli import app

pytestmark = pytest.mark.unit

runner = CliRunner()

# HJ 212-2017, section 6.3.3: the standard's example frame.
STANDARD = (
    "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    "Flag=5;CP=&&RtdInterval=30&&1C80"
)


def test_decode_argument() -> None:
    result = runner.invoke(app, ["decode", STANDARD + "\\r\\n"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["length"] == 101
    assert doc["crc"] == "1C80"
    assert doc["cn"] == "1062"
    assert doc["flag_bits"] == {"version": 1, "split": False, "ack": True}
    assert doc["cp"] == [{"RtdInterval": "30"}]
    assert doc["message"] == {"type": "SetRtdInterval", "interval_s": 30}


def test_decode_stdin_data_upload() -> None:
    encoded = runner.invoke(
        app,
        [
            "encode",
            "--cn=2011",
            "--mn=010000A8900016F000169DC0",
            "--qn=20160801085857223",
            "--flag=5",
            "--cp=DataTime=20160801085857;a34004-Rtd=35.2,a34004-Flag=D",
        ],
    )
    assert encoded.exit_code == 0, encoded.output
    frame = encoded.stdout.strip()
    assert frame.startswith("##0")
    result = runner.invoke(app, ["decode"], input=frame + "\r\n")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["message"]["type"] == "DataUpload"
    assert doc["message"]["data_time"] == "2016-08-01T08:58:57"
    assert doc["message"]["pollutants"]["a34004"] == {
        "Rtd": "35.2",
        "Flag": "D",
        "flag_meaning": "instrument fault",
    }


def test_decode_answer_meaning() -> None:
    encoded = runner.invoke(app, ["encode", "--cn=9011", "--mn=M1", "--st=91", "--cp=QnRtn=3"])
    result = runner.invoke(app, ["decode", encoded.stdout])
    doc = json.loads(result.stdout)
    assert doc["message"] == {"type": "RequestAnswer", "code": 3, "meaning": "PW error"}


def test_decode_length_mismatch_says_both_numbers() -> None:
    result = runner.invoke(app, ["decode", STANDARD.replace("##0101", "##0100")])
    assert result.exit_code == 1
    assert "length mismatch: header declares 100 bytes, data segment has 101" in result.stderr


def test_decode_crc_mismatch_says_both_values() -> None:
    result = runner.invoke(app, ["decode", STANDARD.replace("1C80", "ABCD")])
    assert result.exit_code == 1
    assert "CRC mismatch: frame carries ABCD, data segment computes to 1C80" in result.stderr


def test_decode_field_error_names_the_field() -> None:
    encoded = runner.invoke(app, ["encode", "--cn=2011", "--mn=M1", "--cp=a34004-Rtd=1"])
    result = runner.invoke(app, ["decode", encoded.stdout])
    assert result.exit_code == 1
    assert "field DataTime: missing" in result.stderr


def test_encode_refuses_bad_fields() -> None:
    result = runner.invoke(app, ["encode", "--cn=20", "--mn=M1"])
    assert result.exit_code == 1
    assert "field CN" in result.stderr


def test_encode_refuses_non_ascii_cp_cleanly() -> None:
    result = runner.invoke(app, ["encode", "--cn=2011", "--mn=M1", "--cp=a34004-Rtd=温度"])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "cannot encode" in result.stderr
    assert "non-ASCII character '温'" in result.stderr
    assert "Traceback" not in result.output


def test_encode_standard_example() -> None:
    result = runner.invoke(
        app,
        [
            "encode",
            "--cn=1062",
            "--st=32",
            "--pw=100000",
            "--mn=010000A8900016F000169DC0",
            "--qn=20160801085857223",
            "--flag=5",
            "--cp=RtdInterval=30",
        ],
    )
    assert result.stdout.strip() == STANDARD
