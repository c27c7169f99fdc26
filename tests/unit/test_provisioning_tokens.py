"""Provisioning tokens, their checks, the failure limiter, the bulk CSV parser, and the
service's claim rules (on an SQLite file, with a recording BrokerAdmin)."""

from __future__ import annotations

import base64
import hashlib
import math
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from cloud_hub.provisioning import (
    BrokerAdminError,
    DeviceSpec,
    FailureLimiter,
    InvalidRequest,
    NotFound,
    ProvisioningConflict,
    ProvisioningService,
    ProvisioningSettings,
    PublicMqtt,
    RateLimited,
    ScopeViolation,
    TokenRefused,
)
from cloud_hub.provisioning.broker import agent_acls
from cloud_hub.provisioning.service import parse_bulk_csv
from cloud_hub.provisioning.tokens import (
    TOKEN_PREFIX,
    TokenState,
    check_usable,
    hash_token,
    hashes_match,
    new_token,
)
from cloud_hub.registry import Registry
from edge_agent import provision as edge_provision
from edge_agent.provision import ProvisionedCredentials, ProvisionError, claim, write_credentials
from edge_agent.settings import AgentSettings
from iot_runtime import load_settings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


# -- token secrets --------------------------------------------------------------------------


def test_tokens_carry_at_least_128_random_bits_and_are_stored_as_sha256() -> None:
    tokens = [new_token() for _ in range(200)]
    secrets_ = [secret for _, secret, _ in tokens]
    assert len(set(secrets_)) == len(secrets_)
    assert len({token_id for token_id, _, _ in tokens}) == len(tokens)
    for _, secret, digest in tokens:
        assert secret.startswith(TOKEN_PREFIX)
        body = secret.removeprefix(TOKEN_PREFIX)
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        assert len(raw) * 8 >= 128
        assert digest == hashlib.sha256(secret.encode()).hexdigest() == hash_token(secret)
        assert secret not in digest
    # every bit position varies across tokens (a crude check that the bytes are random)
    bits = [
        int.from_bytes(base64.urlsafe_b64decode(s.removeprefix(TOKEN_PREFIX)), "big")
        for s in secrets_
    ]
    union = intersection = bits[0]
    for value in bits[1:]:
        union |= value
        intersection &= value
    assert union.bit_count() > 180 and intersection == 0


def test_hash_comparison() -> None:
    _, secret, digest = new_token()
    assert hashes_match(digest, hash_token(secret))
    assert not hashes_match(digest, hash_token(secret + "x"))


# -- usability --------------------------------------------------------------------------------


def _state(**changes: Any) -> TokenState:
    fields: dict[str, Any] = {
        "expires_at": NOW + timedelta(hours=1),
        "max_uses": 2,
        "uses": 0,
        "revoked_at": None,
    }
    fields.update(changes)
    return TokenState(**fields)


def test_a_fresh_token_is_usable_up_to_its_limit() -> None:
    check_usable(_state(), NOW)
    check_usable(_state(uses=1), NOW)
    # SQLite hands naive datetimes back: they are UTC
    check_usable(_state(expires_at=(NOW + timedelta(seconds=1)).replace(tzinfo=None)), NOW)


@pytest.mark.parametrize(
    ("changes", "reason", "status"),
    [
        ({"uses": 2}, "exhausted", 410),
        ({"expires_at": NOW}, "expired", 410),
        ({"expires_at": (NOW - timedelta(seconds=1)).replace(tzinfo=None)}, "expired", 410),
        ({"revoked_at": NOW - timedelta(days=1)}, "revoked", 410),
    ],
)
def test_refusals_have_distinct_reasons(changes: dict[str, Any], reason: str, status: int) -> None:
    with pytest.raises(TokenRefused) as refused:
        check_usable(_state(**changes), NOW)
    assert refused.value.reason == reason
    assert refused.value.status == status


def test_unknown_and_missing_tokens_are_401() -> None:
    assert TokenRefused("unknown", "x").status == 401
    assert TokenRefused("missing", "x").status == 401


# -- failure limiter ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_a_burst_of_failures_then_refuses_with_retry_after() -> None:
    clock = Clock()
    limiter = FailureLimiter(failures_per_minute=6, burst=3, clock=clock)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failure("10.0.0.1")
    with pytest.raises(RateLimited) as limited:
        limiter.check("10.0.0.1")
    assert limited.value.status == 429
    assert limited.value.retry_after_s == 10  # one failure refills in 60/6 s
    limiter.check("10.0.0.2")  # other addresses are not affected
    clock.now += 9.5
    with pytest.raises(RateLimited) as limited:
        limiter.check("10.0.0.1")
    assert limited.value.retry_after_s == 1  # rounded up, never 0
    clock.now += 0.5
    limiter.check("10.0.0.1")
    limiter.failure("10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("10.0.0.1")
    clock.now += 3600  # refills, but never beyond the burst
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failure("10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.check("10.0.0.1")


def test_limiter_tracks_a_bounded_number_of_addresses() -> None:
    limiter = FailureLimiter(failures_per_minute=1, burst=1, max_clients=100, clock=Clock())
    for i in range(1000):
        limiter.failure(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 100
    with pytest.raises(RateLimited):
        limiter.check("10.0.3.231")  # the most recent ones are kept


def test_limiter_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="failures_per_minute"):
        FailureLimiter(failures_per_minute=0)
    assert math.isclose(FailureLimiter(failures_per_minute=30).rate_per_s, 0.5)


# -- ACL ----------------------------------------------------------------------------------------


def test_agent_acl_allows_its_namespace_and_denies_everything_else() -> None:
    acls = agent_acls("cab-1")
    allowed = {(a["acltype"], a["topic"]) for a in acls if a["allow"]}
    denied = {(a["acltype"], a["topic"]) for a in acls if not a["allow"]}
    kinds = {"publishClientSend", "publishClientReceive", "subscribePattern"}
    assert allowed == {(k, "iot/v1/cab-1/#") for k in kinds}
    assert denied == {(k, "#") for k in kinds}
    assert min(a["priority"] for a in acls if a["allow"]) > max(
        a["priority"] for a in acls if not a["allow"]
    )


# -- bulk CSV -----------------------------------------------------------------------------------


def test_bulk_csv_groups_devices_by_agent() -> None:
    text = (
        "\ufeffagent_id,device_id,profile,site,pole,lat,lon,tags\n"
        "cab-1,pole-1,smart_pole,north,P1,51.5,-0.1,road=A1;lane=2\n"
        "cab-1,pole-2,smart_pole,north,P2,,,\n"
        ",,,,,,,\n"
        "cab-2,pole-3,smart_pole,,P3,,,\n"
    )
    plans = parse_bulk_csv(text, None, 100)
    assert list(plans) == ["cab-1", "cab-2"]
    site, specs = plans["cab-1"]
    assert site == "north"
    assert [s.device_id for s in specs] == ["pole-1", "pole-2"]
    assert specs[0].tags == {"road": "A1", "lane": "2"}
    assert specs[0].lat == 51.5 and specs[1].lat is None
    assert plans["cab-2"][0] is None
    # a technician's rows default to their site
    assert parse_bulk_csv(text.replace(",north,", ",,"), "north", 100)["cab-2"][0] == "north"


def test_bulk_csv_reports_every_bad_row_with_its_line() -> None:
    text = (
        "agent_id,device_id,profile,site,lat,tags\n"
        "cab 1,pole-1,smart_pole,north,,\n"
        "cab-1,pole-2,no_such_profile,north,,\n"
        "cab-1,pole-3,smart_pole,north,95,\n"
        "cab-1,pole-3,smart_pole,north,,\n"
        "cab-1,pole-4,smart_pole,south,,\n"
        "cab-2,pole-5,smart_pole,north,,novalue\n"
    )
    with pytest.raises(InvalidRequest) as invalid:
        parse_bulk_csv(text, "north", 100)
    detail = invalid.value.detail
    assert "line 2, agent_id" in detail
    assert "line 3, profile" in detail
    assert "line 4, lat" in detail
    assert "line 5, device_id: 'pole-3' already on line" not in detail  # line 4 was refused
    assert "line 6, site: 'south' is outside your site 'north'" in detail
    assert "line 7, tags" in detail


def test_bulk_csv_refuses_unknown_columns_and_too_many_rows() -> None:
    with pytest.raises(InvalidRequest, match="unknown column 'colour'"):
        parse_bulk_csv("agent_id,device_id,profile,colour\n", None, 10)
    with pytest.raises(InvalidRequest, match="missing column 'profile'"):
        parse_bulk_csv("agent_id,device_id\n", None, 10)
    rows = "".join(f"cab-1,pole-{i},smart_pole\n" for i in range(3))
    with pytest.raises(InvalidRequest, match="more than 2 rows"):
        parse_bulk_csv("agent_id,device_id,profile\n" + rows, None, 2)
    with pytest.raises(InvalidRequest, match="no rows"):
        parse_bulk_csv("agent_id,device_id,profile\n", None, 2)


# -- the service on SQLite, with a recording broker ------------------------------------------------


class RecordingBroker:
    def __init__(self) -> None:
        self.users: dict[str, tuple[str, str, bool]] = {}  # username → agent, password, enabled
        self.fail_next_create = False

    async def create_agent(self, agent_id: str, username: str, password: str) -> None:
        if self.fail_next_create:
            self.fail_next_create = False
            raise BrokerAdminError("broker says no")
        assert username not in self.users
        self.users[username] = (agent_id, password, True)

    async def disable_agent(self, agent_id: str, username: str) -> None:
        agent, password, _ = self.users[username]
        self.users[username] = (agent, password, False)

    async def delete_agent(self, agent_id: str, username: str) -> None:
        self.users.pop(username, None)


class SettableNow:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ProvisioningService]:
    registry = Registry(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    await registry.start()
    try:
        yield ProvisioningService(
            registry,
            RecordingBroker(),
            ProvisioningSettings(failed_claims_per_minute=60, failed_claims_burst=3),
            PublicMqtt(host="broker.example", port=8883, tls=True),
            now=SettableNow(),
        )
    finally:
        await registry.close()


POLE = DeviceSpec(device_id="pole-1", profile="smart_pole", pole="P1")


async def test_claim_registers_the_agent_and_issues_credentials(
    service: ProvisioningService,
) -> None:
    broker = service.broker
    assert isinstance(broker, RecordingBroker)
    issued = await service.create_token("key-1", site="north", max_uses=2)
    result = await service.claim(issued.secret, "cab-1", [POLE], "10.0.0.1")
    assert result.site == "north" and result.devices == ["pole-1"]
    assert result.client_id == "agent-cab-1" and result.topic_root == "iot/v1/cab-1"
    assert result.mqtt.host == "broker.example" and result.mqtt.tls
    assert broker.users[result.username] == ("cab-1", result.password, True)
    assert len(result.password) >= 40
    device = await service.registry.get_device("pole-1")
    assert device is not None and device.agent_id == "cab-1" and device.profile == "smart_pole"

    # live credentials: a second claim for the same agent is a conflict, and costs no use
    with pytest.raises(ProvisioningConflict, match="already provisioned"):
        await service.claim(issued.secret, "cab-1", [], "10.0.0.1")
    # a device of another agent cannot be taken over
    with pytest.raises(ProvisioningConflict, match="belongs to agent 'cab-1'"):
        await service.claim(issued.secret, "cab-2", [POLE], "10.0.0.1")
    # devices elsewhere than the token's site are refused
    south = DeviceSpec(device_id="pole-9", profile="smart_pole", site="south")
    with pytest.raises(ScopeViolation, match="site 'south'"):
        await service.claim(issued.secret, "cab-2", [south], "10.0.0.1")
    await service.claim(issued.secret, "cab-2", [], "10.0.0.1")  # second (last) use
    with pytest.raises(TokenRefused) as refused:
        await service.claim(issued.secret, "cab-3", [], "10.0.0.1")
    assert refused.value.reason == "exhausted"

    # revocation disables the broker user; then the agent may be provisioned afresh
    revoked = await service.revoke_agent("admin-1", "cab-1")
    assert revoked.revoked_at is not None
    assert broker.users[result.username][2] is False
    again = await service.create_token("key-1", site="north")
    second = await service.claim(again.secret, "cab-1", [POLE], "10.0.0.1")
    assert second.username != result.username
    assert result.username not in broker.users  # the old user is gone
    with pytest.raises(NotFound):
        await service.revoke_agent("admin-1", "nobody")

    actions = [(e.actor, e.action, e.target) for e in await service.audit_log()]
    assert actions[0] == ("agent:cab-1", "agent.claim", "agent:cab-1")
    assert ("admin-1", "agent.revoke", "agent:cab-1") in actions
    assert ("key-1", "token.create", f"token:{issued.token_id}") in actions
    page = await service.audit_log(limit=2)
    older = await service.audit_log(limit=100, before=page[-1].id)
    assert len(page) == 2 and all(e.id < page[-1].id for e in older)
    assert all(issued.secret not in str(e.detail) for e in await service.audit_log())


async def test_expired_revoked_unknown_and_rate_limited(service: ProvisioningService) -> None:
    now = service._now
    assert isinstance(now, SettableNow)
    issued = await service.create_token("key-1", site=None, ttl_s=60)
    revoked = await service.create_token("key-1", site=None)
    await service.revoke_token("key-1", revoked.token_id)
    now.now += timedelta(seconds=61)
    with pytest.raises(TokenRefused) as refused:
        await service.claim(issued.secret, "cab-1", [], "10.0.0.7")
    assert refused.value.reason == "expired"
    with pytest.raises(TokenRefused) as refused:
        await service.claim(revoked.secret, "cab-1", [], "10.0.0.7")
    assert refused.value.reason == "revoked"
    with pytest.raises(TokenRefused) as refused:
        await service.claim("cpt_guess", "cab-1", [], "10.0.0.7")
    assert refused.value.reason == "unknown"
    # three failures spent the burst: even a good token is refused from that address now
    good = await service.create_token("key-1", site=None)
    with pytest.raises(RateLimited):
        await service.claim(good.secret, "cab-1", [], "10.0.0.7")
    await service.claim(good.secret, "cab-1", [], "10.0.0.8")
    assert [t.token_id for t in await service.list_tokens()] == []  # all used or dead
    assert len(await service.list_tokens(include_inactive=True)) == 3


async def test_token_scope_and_manifest(service: ProvisioningService) -> None:
    planned = [POLE, DeviceSpec(device_id="pole-2", profile="smart_pole")]
    [issued] = await service._create_tokens("key-1", [("north", "cab-1", planned)], None, 1, "")
    with pytest.raises(ScopeViolation, match="for agent 'cab-1'"):
        await service.claim(issued.secret, "cab-2", [], "10.0.0.1")
    wrong = DeviceSpec(device_id="pole-2", profile="pollution_monitor")
    with pytest.raises((InvalidRequest, ValueError)):
        await service.claim(issued.secret, "cab-1", [wrong], "10.0.0.1")
    extra = DeviceSpec(device_id="pole-3", profile="smart_pole")
    result = await service.claim(issued.secret, "cab-1", [extra], "10.0.0.1")
    assert result.devices == ["pole-1", "pole-2", "pole-3"]
    with pytest.raises(ScopeViolation):
        await service.revoke_token("tech", issued.token_id, site_scope="south")


async def test_a_broker_failure_rolls_the_claim_back(service: ProvisioningService) -> None:
    broker = service.broker
    assert isinstance(broker, RecordingBroker)
    issued = await service.create_token("key-1", site=None)
    broker.fail_next_create = True
    with pytest.raises(BrokerAdminError):
        await service.claim(issued.secret, "cab-1", [POLE], "10.0.0.1")
    assert await service.registry.get_device("pole-1") is None
    result = await service.claim(issued.secret, "cab-1", [POLE], "10.0.0.1")  # use not spent
    assert result.devices == ["pole-1"]


async def test_bulk_tokens(service: ProvisioningService) -> None:
    text = "agent_id,device_id,profile\ncab-1,pole-1,smart_pole\ncab-2,pole-2,smart_pole\n"
    issued = await service.bulk_tokens_from_csv("tech-1", text, site_scope="north")
    assert [(i.agent_id, i.site, i.devices, i.max_uses) for i in issued] == [
        ("cab-1", "north", 1, 1),
        ("cab-2", "north", 1, 1),
    ]
    result = await service.claim(issued[1].secret, "cab-2", [], "10.0.0.1")
    assert result.devices == ["pole-2"] and result.site == "north"
    with pytest.raises(ProvisioningConflict, match="belongs to agent 'cab-2'"):
        await service.bulk_tokens_from_csv(
            "tech-1", "agent_id,device_id,profile\nx,pole-2,smart_pole\n"
        )


# -- the agent's side ---------------------------------------------------------------------------


async def test_agent_claim_translates_the_hubs_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer cpt_good"
        if b"cab-1" in request.content:
            return httpx.Response(
                201,
                json={
                    "agent_id": "cab-1",
                    "site": None,
                    "topic_root": "iot/v1/cab-1",
                    "devices": [],
                    "mqtt": {
                        "host": "h",
                        "port": 1883,
                        "tls": False,
                        "username": "u",
                        "password": "p",
                        "client_id": "agent-cab-1",
                    },
                },
            )
        return httpx.Response(410, json={"reason": "expired", "detail": "token expired"})

    transport = httpx.MockTransport(handler)
    creds = await claim("http://hub", "cpt_good", "cab-1", [], transport=transport)
    assert (creds.username, creds.password, creds.client_id) == ("u", "p", "agent-cab-1")
    assert "p" not in repr(creds).replace("port", "").replace("cab", "")
    with pytest.raises(ProvisionError) as refused:
        await claim("http://hub", "cpt_good", "cab-2", [], transport=transport)
    assert (refused.value.status, refused.value.reason) == (410, "expired")


def test_credentials_are_written_into_the_config_with_mode_0600(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("agent_id: cab-1\nmqtt:\n  host: old\n  keepalive_s: 20\ndevices: []\n")
    config.chmod(0o644)
    creds = ProvisionedCredentials("cab-1", "broker", 8883, True, "u", "p", "agent-cab-1", None, [])
    write_credentials(config, creds)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    settings = load_settings(AgentSettings, config)
    assert settings.mqtt.host == "broker" and settings.mqtt.port == 8883
    assert settings.mqtt.username == "u" and settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "p"
    assert settings.mqtt.keepalive_s == 20 and settings.mqtt.tls is not None
    assert [p.name for p in tmp_path.iterdir()] == ["agent.yaml"]  # no temporary file left


def test_the_provision_command_claims_and_stores_the_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent_id: cab-1\n"
        "devices:\n"
        "  - device_id: pole-1\n"
        "    profile: smart_pole\n"
        "    connection: {transport: modbus_tcp, host: 127.0.0.1, port: 5020, unit_id: 1}\n"
    )
    calls: list[tuple[str, str, str, list[dict[str, Any]]]] = []

    async def fake_claim(
        hub_url: str, token: str, agent_id: str, devices: list[dict[str, Any]]
    ) -> ProvisionedCredentials:
        calls.append((hub_url, token, agent_id, devices))
        if token == "cpt_bad":
            raise ProvisionError(410, "expired", "the provisioning token expired")
        return ProvisionedCredentials("cab-1", "b", 1883, False, "u", "p", "agent-cab-1", "n", [])

    monkeypatch.setattr(edge_provision, "claim", fake_claim)
    app = typer.Typer()
    app.command()(edge_provision.provision)
    runner = CliRunner()
    result = runner.invoke(
        app, ["--hub", "http://hub", "--config", str(config), "--site", "north"],
        env={"EDGE_AGENT_PROVISION_TOKEN": "cpt_good"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls == [
        (
            "http://hub",
            "cpt_good",
            "cab-1",
            [{"device_id": "pole-1", "profile": "smart_pole", "site": "north"}],
        )
    ]
    assert load_settings(AgentSettings, config).mqtt.username == "u"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    result = runner.invoke(
        app, ["--hub", "http://hub", "--config", str(config), "--token", "cpt_bad"]
    )
    assert result.exit_code == 1
    assert "expired" in result.output
    result = runner.invoke(
        app, ["--hub", "http://hub", "--config", str(tmp_path / "nope.yaml"), "--token", "t"]
    )
    assert result.exit_code == 2
