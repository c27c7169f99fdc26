"""Serial port identity and RTU line settings, with fake adapters (no hardware)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import TypeAdapter, ValidationError

from drivers import serial_ports
from drivers.errors import ConfigurationError, ConnectError
from drivers.modbus.rtu_settings import (
    MIN_FRAME_GAP_S,
    ModbusRtuSettings,
    character_time_s,
    default_frame_gap_s,
)
from drivers.serial_ports import SerialPortIdentity, SerialPortNotFound, resolve_serial_port

pytestmark = pytest.mark.unit


def adapter(device: str, serial_number: str | None, description: str = "n/a") -> SimpleNamespace:
    return SimpleNamespace(device=device, serial_number=serial_number, description=description)


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake /dev: ttyUSB0 (FTDI A10K3ZQ1), ttyUSB1 (CH340, no serial) and a by-id link."""
    (tmp_path / "ttyUSB0").touch()
    (tmp_path / "ttyUSB1").touch()
    by_id = tmp_path / "serial" / "by-id"
    by_id.mkdir(parents=True)
    (by_id / "usb-FTDI_FT232R_USB_UART_A10K3ZQ1-if00-port0").symlink_to(tmp_path / "ttyUSB0")
    monkeypatch.setattr(serial_ports, "BY_ID_DIR", by_id)
    ports = [
        adapter(str(tmp_path / "ttyUSB0"), "A10K3ZQ1", "FT232R USB UART"),
        adapter(str(tmp_path / "ttyUSB1"), None),
    ]
    monkeypatch.setattr(serial_ports.list_ports, "comports", lambda: ports)
    return tmp_path


def test_a_by_id_link_resolves_to_its_device_and_reports_both(dev: Path):
    link = dev / "serial/by-id/usb-FTDI_FT232R_USB_UART_A10K3ZQ1-if00-port0"
    identity = resolve_serial_port(port=str(link))
    assert identity == SerialPortIdentity(
        configured=str(link),
        device=str(dev / "ttyUSB0"),
        serial_number="A10K3ZQ1",
        by_id=str(link),
        description="FT232R USB UART",
    )
    assert identity.label == f"{link} -> {dev / 'ttyUSB0'}"


def test_a_plain_device_path_finds_its_by_id_link(dev: Path):
    identity = resolve_serial_port(port=str(dev / "ttyUSB0"))
    assert identity.by_id is not None
    assert identity.by_id.endswith("A10K3ZQ1-if00-port0")
    assert identity.label == str(dev / "ttyUSB0")
    bare = resolve_serial_port(port=str(dev / "ttyUSB1"))
    assert (bare.serial_number, bare.by_id, bare.description) == (None, None, None)


def test_a_serial_number_finds_the_adapter_wherever_it_is(dev: Path, monkeypatch):
    identity = resolve_serial_port(serial_number="A10K3ZQ1")
    assert (identity.configured, identity.device) == ("serial=A10K3ZQ1", str(dev / "ttyUSB0"))
    # replugged: the kernel calls it ttyUSB1 now
    monkeypatch.setattr(
        serial_ports.list_ports, "comports", lambda: [adapter(str(dev / "ttyUSB1"), "A10K3ZQ1")]
    )
    assert resolve_serial_port(serial_number="A10K3ZQ1").device == str(dev / "ttyUSB1")


def test_a_missing_serial_number_lists_what_is_present(dev: Path):
    with pytest.raises(SerialPortNotFound) as error:
        resolve_serial_port(serial_number="NOPE")
    assert isinstance(error.value, ConnectError)  # an unplugged adapter may come back
    assert error.value.available == (f"{dev / 'ttyUSB0'} (serial A10K3ZQ1)", str(dev / "ttyUSB1"))
    assert "serial=NOPE not found (present: " in str(error.value)


def test_a_missing_path_is_not_found(dev: Path, monkeypatch):
    with pytest.raises(SerialPortNotFound, match="ttyUSB7 not found"):
        resolve_serial_port(port=str(dev / "ttyUSB7"))
    dangling = dev / "serial/by-id/usb-gone"
    dangling.symlink_to(dev / "ttyUSB9")
    with pytest.raises(SerialPortNotFound, match="usb-gone"):
        resolve_serial_port(port=str(dangling))
    monkeypatch.setattr(serial_ports.list_ports, "comports", list)
    with pytest.raises(SerialPortNotFound, match=r"\(present: none\)"):
        resolve_serial_port(port="/dev/ttyUSB7")


def test_two_adapters_with_one_serial_number_are_a_configuration_error(dev: Path, monkeypatch):
    twins = [adapter(str(dev / "ttyUSB0"), "0001"), adapter(str(dev / "ttyUSB1"), "0001")]
    monkeypatch.setattr(serial_ports.list_ports, "comports", lambda: twins)
    with pytest.raises(ConfigurationError, match="by-path"):
        resolve_serial_port(serial_number="0001")


def test_exactly_one_of_port_and_serial_number():
    with pytest.raises(ConfigurationError):
        resolve_serial_port()
    with pytest.raises(ConfigurationError):
        resolve_serial_port(port="/dev/ttyUSB0", serial_number="x")


def test_no_by_id_directory_is_fine(dev: Path, monkeypatch):
    monkeypatch.setattr(serial_ports, "BY_ID_DIR", dev / "absent")
    assert resolve_serial_port(port=str(dev / "ttyUSB0")).by_id is None


# -- ModbusRtuSettings ----------------------------------------------------------------------


def test_rtu_settings_defaults_and_endpoint():
    s = ModbusRtuSettings(port="/dev/ttyUSB0", unit_id=3)
    assert (s.baudrate, s.bytesize, s.parity, s.stopbits) == (9600, 8, "N", 1)
    assert s.endpoint == "modbus-rtu:///dev/ttyUSB0?9600-8N1/3"
    assert ModbusRtuSettings(serial_number="A1").endpoint == "modbus-rtu://serial=A1?9600-8N1/1"


@pytest.mark.parametrize(
    ("baudrate", "parity", "expected_ms"),
    [(9600, "N", 3.5 * 10 / 9.6), (9600, "E", 3.5 * 11 / 9.6), (19200, "N", 3.5 * 10 / 19.2)],
)
def test_frame_gap_is_three_and_a_half_characters(baudrate, parity, expected_ms):
    s = ModbusRtuSettings(port="/dev/ttyS0", baudrate=baudrate, parity=parity)
    assert s.frame_gap_s == pytest.approx(expected_ms / 1000)


def test_frame_gap_is_fixed_above_19200_and_may_be_set():
    assert default_frame_gap_s(38400) == MIN_FRAME_GAP_S
    assert default_frame_gap_s(115200) == MIN_FRAME_GAP_S
    assert character_time_s(9600, 8, "E", 2) == pytest.approx(12 / 9600)
    s = ModbusRtuSettings(port="/dev/ttyS0", baudrate=115200, inter_frame_gap_s=0.01)
    assert s.frame_gap_s == 0.01


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"port": "/dev/ttyS0", "serial_number": "A1"},
        {"port": "/dev/ttyS0", "unit_id": 0},
        {"port": "/dev/ttyS0", "unit_id": 248},
        {"port": "/dev/ttyS0", "parity": "X"},
        {"port": "/dev/ttyS0", "stopbits": 3},
        {"port": "/dev/ttyS0", "bytesize": 5},
        {"port": "/dev/ttyS0", "baud": 9600},
        {"port": ""},
    ],
)
def test_rtu_settings_refuse_bad_values(bad):
    with pytest.raises(ValidationError):
        ModbusRtuSettings.model_validate({"transport": "modbus_rtu", **bad})


def test_rtu_settings_are_picked_by_transport():
    adapter_ = TypeAdapter(ModbusRtuSettings)
    parsed = adapter_.validate_python(
        {"transport": "modbus_rtu", "port": "/dev/ttyUSB0", "parity": "E", "unit_id": 7}
    )
    assert (parsed.parity, parsed.unit_id) == ("E", 7)
