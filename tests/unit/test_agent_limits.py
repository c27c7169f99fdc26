"""Per-agent limits: token buckets, the size limit, episodes, the alarm event and the policy."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from cloud_hub.events.bus import EventBus
from cloud_hub.ingest.agent_limits import AgentLimiter, AgentLimitSettings
from tests.unit.test_alarm_engine import Rig

pytestmark = pytest.mark.unit

FLOOD = "iot/v1/flood/telemetry"
GOOD = "iot/v1/good/telemetry"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(**settings: object) -> tuple[AgentLimiter, Clock, EventBus, list[str]]:
    clock, bus, revoked = Clock(), EventBus(), []

    async def revoke(agent_id: str) -> None:
        revoked.append(agent_id)

    limiter = AgentLimiter(AgentLimitSettings.model_validate(settings), bus, revoke, clock)
    return limiter, clock, bus, revoked


def test_an_agent_gets_its_burst_then_its_rate_and_another_agent_is_untouched() -> None:
    limiter, clock, _, _ = _limiter(rate_msgs_s=10, burst_msgs=100)
    assert sum(limiter.admit(FLOOD, 10) for _ in range(1000)) == 100
    assert all(limiter.admit(GOOD, 10) for _ in range(100))  # its own bucket
    clock.now += 2.0  # refilled at 10/s
    assert sum(limiter.admit(FLOOD, 10) for _ in range(1000)) == 20
    clock.now += 3600  # never past the burst
    assert sum(limiter.admit(FLOOD, 10) for _ in range(1000)) == 100
    assert limiter.shedding["flood"].by_reason == {"rate": 900 + 980 + 900}
    assert "good" not in limiter.shedding
    assert limiter.over_limit() == ["flood"]


def test_bytes_and_size_limits() -> None:
    limiter, clock, _, _ = _limiter(rate_bytes_s=1000, burst_bytes=5000, max_message_bytes=2000)
    assert not limiter.admit(FLOOD, 2001)  # too large, whatever the buckets say
    assert [limiter.admit(FLOOD, 2000) for _ in range(3)] == [True, True, False]
    assert limiter.admit(FLOOD, 1000)  # what is left fits; the refused one cost no message
    clock.now += 1.0
    assert limiter.admit(FLOOD, 1000) and not limiter.admit(FLOOD, 1)
    assert limiter.shedding["flood"].by_reason == {"size": 1, "bytes": 2}


def test_disabled_limits_admit_everything() -> None:
    limiter, _, _, _ = _limiter(enabled=False, burst_msgs=1)
    assert all(limiter.admit(FLOOD, 10**9) for _ in range(1000))


@pytest.mark.parametrize(
    "settings",
    [{"rate_msgs_s": 0}, {"burst_msgs": 0}, {"max_message_bytes": 0}, {"speed": 1}],
)
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        AgentLimitSettings.model_validate(settings)


async def test_an_episode_alarms_once_and_the_policy_revokes_and_blocks() -> None:
    limiter, clock, bus, revoked = _limiter(
        rate_msgs_s=1, burst_msgs=10, alarm_after_shed=50, disable_after_shed=200, quiet_s=60
    )
    status = bus.subscribe(lambda e: e.kind == "status")
    for _ in range(40):
        limiter.admit(FLOOD, 1)
    await limiter.review()
    assert status.queue.empty()  # 30 shed: under alarm_after_shed
    for _ in range(100):
        limiter.admit(FLOOD, 1)
    await limiter.review()
    event = status.queue.get_nowait()
    assert (event.agent_id, event.data["state"], event.data["shed"]) == ("flood", "flooding", 130)
    for _ in range(100):
        limiter.admit(FLOOD, 1)
    await limiter.review()
    assert status.queue.empty()  # one alarm an episode
    assert revoked == ["flood"] and limiter.shedding["flood"].blocked
    clock.now += 3600  # a full bucket, but blocked until the hub restarts
    assert not limiter.admit(FLOOD, 1)
    assert limiter.shedding["flood"].by_reason["blocked"] == 1
    assert limiter.stats["alarms"] == 1 and limiter.stats["disabled"] == 1


async def test_a_quiet_spell_ends_the_episode_and_a_new_one_alarms_again() -> None:
    limiter, clock, bus, revoked = _limiter(rate_msgs_s=1, burst_msgs=1, alarm_after_shed=5)
    status = bus.subscribe(lambda e: e.kind == "status")
    for _ in range(10):
        limiter.admit(FLOOD, 1)
    await limiter.review()
    assert status.queue.get_nowait().data["shed"] == 9
    clock.now += 61  # quiet for longer than quiet_s
    assert limiter.over_limit() == []
    for _ in range(10):
        limiter.admit(FLOOD, 1)
    await limiter.review()
    assert status.queue.get_nowait().data["shed"] == 9  # counted afresh
    assert limiter.shedding["flood"].total == 18 and revoked == []  # no policy by default


async def test_the_alarm_engine_raises_agent_flooding_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "registry.db")
    await rig.start()
    try:
        limiter, _, _, _ = _limiter(burst_msgs=1, alarm_after_shed=3)
        limiter._events = rig.bus
        status = rig.bus.subscribe(lambda e: e.kind == "status")
        for _ in range(2):
            for _ in range(10):
                limiter.admit(FLOOD, 1)
            await limiter.review()
            limiter.shedding["flood"].alarmed = False  # as if a second episode
        for _ in range(2):
            await rig.engine.handle(status.queue.get_nowait())
        [row] = await rig.rows()
        assert (row.rule, row.severity, row.agent_id, row.device_id) == (
            "agent_flooding",
            "major",
            "flood",
            None,
        )
        assert "9 messages shed (rate 9)" in row.message
    finally:
        await rig.close()
