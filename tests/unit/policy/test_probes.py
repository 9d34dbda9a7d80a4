"""Active health checks' verdicts in the kernel: thresholds, degraded weight, panic."""

from __future__ import annotations

import random

import pytest

from loadwarden.policy import (
    Answer,
    Health,
    ManualClock,
    Pool,
    PoolSettings,
    Probed,
    ProbeRecord,
    ProbeRules,
    ServerSpec,
)
from loadwarden.policy._model import Backend
from loadwarden.policy._settings import OutlierSettings
from loadwarden.policy.strategies import StrategyContext, build_strategy

RULES = ProbeRules(unhealthy_threshold=3, healthy_threshold=2, degraded_latency_ms=100.0, degraded_share=0.25)
GOOD, DEGRADED, FAILED = Answer.GOOD, Answer.DEGRADED, Answer.FAILED
C, H, D, U = Probed.UNCHECKED, Probed.HEALTHY, Probed.DEGRADED, Probed.UNHEALTHY


def run(answers: list[Answer], latency_ms: float = 5.0) -> list[Probed]:
    record = ProbeRecord()
    return [record.record(answer, latency_ms, "why", 0.0, RULES) for answer in answers]


def test_unhealthy_after_the_threshold_of_failures_in_a_row() -> None:
    assert run([GOOD, FAILED, FAILED, FAILED]) == [H, H, H, U]
    assert run([GOOD, FAILED, FAILED, GOOD, FAILED, FAILED]) == [H, H, H, H, H, H]  # not in a row


def test_failures_before_the_first_pass_keep_a_server_unchecked_until_the_threshold() -> None:
    assert run([FAILED, FAILED, FAILED]) == [C, C, U]


def test_back_after_the_healthy_threshold_of_passing_checks() -> None:
    assert run([FAILED] * 3 + [GOOD, GOOD]) == [Probed.UNCHECKED] * 2 + [U, U, H]
    assert run([FAILED] * 3 + [GOOD, FAILED, GOOD, DEGRADED]) == [Probed.UNCHECKED] * 2 + [U, U, U, U, D]


def test_degraded_at_once_and_healthy_after_the_threshold_of_good_checks() -> None:
    assert run([GOOD, DEGRADED, GOOD, DEGRADED, GOOD, GOOD]) == [H, D, D, D, D, H]


def test_a_slow_passing_check_counts_as_degraded_and_says_why() -> None:
    record = ProbeRecord()
    assert record.record(GOOD, 150.0, "", 1.0, RULES) is Probed.DEGRADED
    assert record.problem == "answered in 150 ms (degraded above 100 ms)"
    assert record.record(GOOD, 20.0, "", 2.0, RULES) is Probed.DEGRADED
    assert record.record(GOOD, 20.0, "", 3.0, RULES) is Probed.HEALTHY and record.problem == ""
    assert (record.checks_total, record.consecutive_good, record.checked_wall) == (3, 2, 3.0)
    off = ProbeRules(degraded_latency_ms=0.0)
    assert ProbeRecord().record(GOOD, 10_000.0, "", 0.0, off) is Probed.HEALTHY


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("unhealthy_threshold", 0),
        ("healthy_threshold", True),
        ("degraded_latency_ms", -1.0),
        ("degraded_latency_ms", float("nan")),
        ("degraded_share", 0.0),
        ("degraded_share", 1.5),
    ],
)
def test_rules_are_checked_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        ProbeRules(**{field: value})  # type: ignore[arg-type]  # wrong on purpose


def make_pool(n: int = 4, strategy: str = "round_robin", panic: int = 50) -> Pool[None]:
    settings = PoolSettings(name="api", strategy=strategy, outlier=OutlierSettings(panic_threshold_percent=panic))
    servers: dict[str, Backend] = {}
    ctx = StrategyContext(ManualClock(), random.Random(1), servers)
    pool: Pool[None] = Pool(settings, build_strategy(strategy, {}, ctx, "pool"), servers, None)
    for i in range(n):
        pool.upsert(ServerSpec(f"s{i}", f"10.0.0.1:{80 + i}"))
    return pool


def fail(pool: Pool[None], sid: str, times: int = 3) -> None:
    for _ in range(times):
        pool.record_probe(pool.servers[sid], FAILED, 1.0, "HTTP 503", 0.0, RULES)


def test_an_unhealthy_server_is_never_chosen_and_shows_as_unhealthy() -> None:
    pool = make_pool()
    assert len(pool.eligible(0.0)) == 4  # the kept answer is dropped when a verdict changes
    fail(pool, "s1")
    eligible = pool.eligible(0.0)
    assert [s.id for s in eligible] == ["s0", "s2", "s3"] and not pool.panic
    assert pool.health(pool.servers["s1"], 0.0) is Health.UNHEALTHY
    chosen = {pool.strategy.choose(eligible).server.id for _ in range(30)}
    assert "s1" not in chosen


def test_panic_routes_to_unhealthy_servers_as_it_does_to_ejected_ones() -> None:
    pool = make_pool(4, panic=50)
    for sid in ("s0", "s1", "s2"):
        fail(pool, sid)
    assert len(pool.eligible(0.0)) == 4 and pool.panic  # 1 of 4 healthy is under 50 %


def test_a_degraded_server_weighs_its_share_and_comes_back_whole() -> None:
    pool = make_pool(2)
    server = pool.servers["s0"]
    assert pool.record_probe(server, DEGRADED, 5.0, "status degraded", 0.0, RULES) is Probed.DEGRADED
    assert {s.id: s.effective_weight for s in pool.eligible(0.0)} == {"s0": 0.25, "s1": 1.0}
    assert pool.health(server, 0.0) is Health.DEGRADED
    picks = [pool.strategy.choose(pool.eligible(0.0)).server.id for _ in range(250)]
    assert picks.count("s0") == 50  # weighted round robin: 0.25 / 1.25 of the picks
    pool.record_probe(server, GOOD, 5.0, "", 1.0, RULES)
    assert pool.record_probe(server, GOOD, 5.0, "", 2.0, RULES) is Probed.HEALTHY
    assert {s.id: s.effective_weight for s in pool.eligible(0.0)} == {"s0": 1.0, "s1": 1.0}


def test_forgetting_a_probe_makes_the_server_unchecked_and_routable() -> None:
    pool = make_pool(2)
    fail(pool, "s0")
    assert [s.id for s in pool.eligible(0.0)] == ["s1"]
    pool.forget_probe(pool.servers["s0"])
    assert pool.servers["s0"].probe is None and len(pool.eligible(0.0)) == 2
