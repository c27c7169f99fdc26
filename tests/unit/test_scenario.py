"""The firmware-sim scenario file (validation, error paths) and the control request handling."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from device_profiles import ProfileError
from firmware_sim.control import ControlError, ControlServer, FaultRequest, ModbusSim
from firmware_sim.faults import Fault, FaultInjector, TrafficLog
from firmware_sim.scenario import (
    KINDS,
    GatewayBusSpec,
    Scenario,
    SimSpec,
    SmartPoleTcpSpec,
    load_scenario,
    parse_scenario,
)

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site.yaml"


def _errors(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_scenario(path)
    assert info.value.source == str(path)
    return str(info.value)


def test_the_example_site_is_valid() -> None:
    scenario = load_scenario(EXAMPLE)
    kinds = {sim.kind for sim in scenario.sims}
    assert {"smart_pole_tcp", "smart_pole_rtu", "gateway_bus", "manhole_cover"} <= kinds
    assert len({sim.name for sim in scenario.sims}) == len(scenario.sims)


def test_kinds_cover_the_union() -> None:
    members = get_args(get_args(SimSpec)[0])
    assert tuple(m.model_fields["kind"].annotation.__args__[0] for m in members) == KINDS


def test_defaults_pick_free_ports() -> None:
    scenario = parse_scenario({"sims": [{"name": "p", "kind": "smart_pole_tcp"}]}, "x")
    sim = scenario.sims[0]
    assert isinstance(sim, SmartPoleTcpSpec)
    assert (sim.port, sim.unit_id, sim.host) == (0, 1, "127.0.0.1")
    assert scenario.agent_id == "sim-site"


def test_unknown_key_names_file_and_path(tmp_path: Path) -> None:
    message = _errors(
        tmp_path,
        "sims:\n  - {name: p, kind: smart_pole_tcp}\n  - {name: q, kind: manhole_cover, colour: red}\n",
    )
    assert message.startswith(f"{tmp_path / 'site.yaml'}: sims[1].colour: Extra inputs")


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = _errors(tmp_path, "sims: [{name: p, kind: smart_pole_tcp}]\nsimz: []\n")
    assert "site.yaml: simz: Extra inputs are not permitted" in message


def test_bad_port_names_the_sim_index(tmp_path: Path) -> None:
    message = _errors(
        tmp_path,
        "sims:\n"
        "  - {name: a, kind: smart_pole_tcp}\n"
        "  - {name: b, kind: nbiot_modem}\n"
        "  - {name: c, kind: smart_pole_tcp, port: 70000}\n",
    )
    assert "site.yaml: sims[2].port: Input should be less than or equal to 65535" in message
    assert "(got 70000)" in message


def test_duplicate_sim_names(tmp_path: Path) -> None:
    message = _errors(
        tmp_path, "sims:\n  - {name: a, kind: smart_pole_tcp}\n  - {name: a, kind: manhole_cover}\n"
    )
    assert "site.yaml: sims[1].name: 'a' is already the name of sims[0]" in message


def test_unknown_kind(tmp_path: Path) -> None:
    message = _errors(tmp_path, "sims:\n  - {name: a, kind: toaster}\n")
    assert "site.yaml: sims[0].kind: unknown kind 'toaster' (have: smart_pole_tcp," in message


def test_missing_kind(tmp_path: Path) -> None:
    message = _errors(tmp_path, "sims:\n  - {name: a}\n")
    assert "sims[0].kind: missing kind" in message


def test_duplicate_yaml_key_has_its_line(tmp_path: Path) -> None:
    message = _errors(tmp_path, "seed: 1\nseed: 2\nsims: [{name: a, kind: smart_pole_tcp}]\n")
    assert "site.yaml: line 2" in message
    assert "duplicate key 'seed'" in message


def test_kind_specific_options_are_checked() -> None:
    with pytest.raises(ProfileError, match=r"sims\[0\]\.unit_id: Input should be greater"):
        parse_scenario({"sims": [{"name": "p", "kind": "smart_pole_rtu", "unit_id": 0}]}, "x")
    with pytest.raises(ProfileError, match=r"sims\[0\]\.host: Extra inputs"):
        parse_scenario({"sims": [{"name": "g", "kind": "gateway_bus", "host": "h"}]}, "x")
    with pytest.raises(ProfileError, match=r"sims\[0\]\.units: no gateway device model"):
        parse_scenario({"sims": [{"name": "g", "kind": "gateway_bus", "units": {"tv": 1}}]}, "x")
    with pytest.raises(ProfileError, match=r"sims\[0\]\.name: String should match pattern"):
        parse_scenario({"sims": [{"name": "no spaces", "kind": "nbiot_modem"}]}, "x")


def test_two_sims_on_one_port_link_are_refused() -> None:
    sims = [
        {"name": "g1", "kind": "gateway_bus", "link_dir": "/tmp/site"},
        {"name": "g2", "kind": "gateway_bus", "link_dir": "/tmp/site"},
    ]
    with pytest.raises(ProfileError, match=r"sims\[1\]: port link /tmp/site/ttyGW0 is already"):
        parse_scenario({"sims": sims}, "x")
    sims[1]["link_name"] = "ttyGW1"
    scenario = parse_scenario({"sims": sims}, "x")
    assert isinstance(scenario.sims[1], GatewayBusSpec)


def test_empty_sims() -> None:
    with pytest.raises(ProfileError, match="sims: List should have at least 1 item"):
        parse_scenario({"sims": []}, "x")
    assert Scenario.model_fields["sims"].is_required()


# -- control requests, against a Modbus handle without a server --------------------------


def _control() -> tuple[ControlServer, FaultInjector]:
    injector = FaultInjector()
    sim = ModbusSim(
        name="pole-1",
        kind="smart_pole_tcp",
        address="modbus-tcp://127.0.0.1:1 unit 1",
        injector=injector,
        log=TrafficLog(),
    )
    return ControlServer({"pole-1": sim}, "unused"), injector


def test_fault_maps_onto_the_modbus_injector() -> None:
    server, injector = _control()
    done = server.handle({"op": "fault", "sim": "pole-1", "fault": "no_reply", "count": 2})
    assert done == "no_reply on pole-1: next 2 request(s)"
    server.handle({"op": "fault", "sim": "pole-1", "fault": "delay", "delay_s": 0.2})
    assert [(r.fault, r.remaining) for r in injector.rules] == [
        (Fault.no_reply, 2),
        (Fault.delay, None),
    ]
    (status,) = server.handle({"op": "status"})
    assert status["faults"] == [
        "no_reply (next 2 request(s))",
        "delay (every request until cleared)",
    ]
    assert status["traffic"] == {"requests": 0, "answers": 0, "faults_applied": 0}
    server.handle({"op": "clear", "sim": "pole-1"})
    assert injector.rules == []


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"op": "fault", "sim": "pole-9", "fault": "no_reply"}, "no sim 'pole-9' (have: pole-1)"),
        ({"op": "fault", "sim": "pole-1", "fault": "melt"}, "has no fault 'melt' (have: no_reply"),
        (
            {"op": "fault", "sim": "pole-1", "fault": "no_reply", "command": "AT"},
            "takes no command",
        ),
        ({"op": "fault", "sim": "pole-1", "fault": "no_reply", "count": -1}, "count: Input should"),
        ({"op": "explode", "sim": "pole-1"}, "unknown op 'explode'"),
        (["not", "an", "object"], "a request is a JSON object"),
    ],
)
def test_bad_requests_say_why(message: object, error: str) -> None:
    server, _ = _control()
    with pytest.raises(ControlError, match=r".*") as info:
        server.handle(message)
    assert error in str(info.value)


def test_fault_request_refuses_unknown_fields() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        FaultRequest.model_validate({"fault": "drop", "colour": "red"})
