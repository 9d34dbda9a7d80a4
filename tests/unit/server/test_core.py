"""The decision core with an injected clock and seeded RNG: no sockets, no sleeps."""

from __future__ import annotations

import random
from typing import Any

import pytest

from loadwarden.policy._decisions import IdGenerator, PendingDecisions
from loadwarden.policy._errors import NotFound, ResourceExhausted, Unavailable
from loadwarden.policy._model import LoadSample
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import LoadReportIn, OutcomeReport

SAMPLE = LoadSample(cpu_percent=10, memory_percent=20, active_requests=1, mean_latency_ms=5, error_rate=0)


def make_core(clock: ManualClock, strategy: str = "round_robin", **limits: Any) -> DecisionCore:
    core = DecisionCore(CoreLimits(**limits), clock=clock, rng=random.Random(3), ids=IdGenerator("t"))
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in (1, 2, 3)]
    core.configure_pool(PoolSettings(name="api", strategy=strategy, load_report_ttl_ms=10_000), specs)
    return core


def test_select_counts_in_flight_until_outcome() -> None:
    clock = ManualClock()
    core = make_core(clock)
    choice = core.select("api")
    assert choice.server.in_flight == 1 and choice.decision_id.startswith("t-1-")
    applied, unknown, _ = core.report_outcomes([OutcomeReport(choice.decision_id, True, 12.0)])
    assert (applied, unknown) == (1, [])
    assert choice.server.in_flight == 0
    assert choice.server.ewma_latency_ms == 12.0 and choice.server.error_rate == 0.0


def test_outcome_ewma_moves_towards_new_values() -> None:
    core = make_core(ManualClock())
    for latency, ok in ((10.0, True), (20.0, False)):
        d = core.select("api", exclude={"s2", "s3"})
        core.report_outcomes([OutcomeReport(d.decision_id, ok, latency)])
    s1 = core.pool("api").servers["s1"]
    assert s1.ewma_latency_ms == pytest.approx(12.0)
    assert s1.error_rate == pytest.approx(0.2)


def test_decision_expires_after_ttl_and_frees_in_flight() -> None:
    clock = ManualClock()
    core = make_core(clock, decision_ttl_ms=1_000)
    choice = core.select("api")
    clock.advance(0.999)
    assert core.expire() == 0 and choice.server.in_flight == 1
    clock.advance(0.002)
    assert core.expire() == 1 and choice.server.in_flight == 0
    with pytest.raises(NotFound) as err:
        core.report_outcomes([OutcomeReport(choice.decision_id, True, 1.0)])
    assert err.value.field == "outcomes[0].decision_id"
    assert "expired after 1000 ms" in str(err.value)


def test_outcome_batch_applies_known_and_lists_unknown() -> None:
    core = make_core(ManualClock())
    d = core.select("api")
    applied, unknown, _ = core.report_outcomes(
        [OutcomeReport("t-999", True, 1.0), OutcomeReport(d.decision_id, True, 1.0)]
    )
    assert applied == 1 and unknown == ["t-999"]


def test_second_report_of_same_decision_is_unknown() -> None:
    core = make_core(ManualClock())
    d = core.select("api")
    core.report_outcomes([OutcomeReport(d.decision_id, True, 1.0)])
    with pytest.raises(NotFound):
        core.report_outcomes([OutcomeReport(d.decision_id, True, 1.0)])
    assert d.server.in_flight == 0  # never negative


def test_pending_decisions_are_bounded_oldest_expired_first() -> None:
    core = make_core(ManualClock(), max_pending_decisions=5)
    first = core.select("api")
    for _ in range(5):
        core.select("api")
    assert len(core.pending) == 5
    assert core.pending.pop(first.decision_id) is None
    assert sum(s.in_flight for s in core.pool("api").servers.values()) == 5


def test_least_connections_prefers_idle_server() -> None:
    core = make_core(ManualClock(), strategy="least_connections")
    busy = core.select("api", exclude={"s2", "s3"})
    core.select("api", exclude={"s1", "s3"})
    assert busy.server.id == "s1"
    assert core.select("api").server.id == "s3"


def test_stale_and_drained_servers_are_never_picked() -> None:
    clock = ManualClock()
    core = make_core(clock)
    core.report_load([LoadReportIn("api", "s1", SAMPLE)])
    clock.advance(10.001)  # s1's report is now older than the 10 s TTL
    core.drain_server("api", "s2", True)
    assert {core.select("api").server.id for _ in range(30)} == {"s3"}
    core.report_load([LoadReportIn("api", "s1", SAMPLE)])  # fresh again
    assert {core.select("api").server.id for _ in range(30)} == {"s1", "s3"}


def test_required_load_report_makes_silent_servers_stale() -> None:
    clock = ManualClock()
    core = DecisionCore(clock=clock, rng=random.Random(1))
    core.configure_pool(PoolSettings(name="p", require_load_report=True), [ServerSpec("a", "h:1")])
    with pytest.raises(Unavailable, match="1 stale"):
        core.select("p")
    core.report_load([LoadReportIn("p", "a", SAMPLE)])
    assert core.select("p").server.id == "a"


def test_no_eligible_server_says_why() -> None:
    clock = ManualClock()
    core = make_core(clock)
    core.drain_server("api", "s1", True)
    core.report_load([LoadReportIn("api", "s2", SAMPLE)])
    clock.advance(60)
    with pytest.raises(Unavailable) as err:
        core.select("api", exclude={"s3"})
    message = str(err.value)
    assert "no eligible server" in message
    assert "1 draining" in message and "1 stale" in message and "1 excluded" in message
    assert "10000 ms" in message


def test_empty_pool_is_unavailable() -> None:
    core = DecisionCore(clock=ManualClock())
    core.configure_pool(PoolSettings(name="empty"), None)
    with pytest.raises(Unavailable, match="has no servers"):
        core.select("empty")


def test_unknown_pool_and_server_are_not_found() -> None:
    core = make_core(ManualClock())
    with pytest.raises(NotFound) as err:
        core.select("nope")
    assert err.value.field == "pool"
    with pytest.raises(NotFound) as err:
        core.report_load([LoadReportIn("api", "s1", SAMPLE), LoadReportIn("api", "zz", SAMPLE)])
    assert err.value.field == "reports[1].server_id"
    assert core.pool("api").servers["s1"].load is None  # whole batch rejected: nothing applied


def test_reconfigure_keeps_server_state_and_learned_strategy() -> None:
    core = make_core(ManualClock())
    d = core.select("api")
    strategy = core.pool("api").strategy
    settings = PoolSettings(name="api", load_report_ttl_ms=5_000)
    pool, created = core.configure_pool(settings, [ServerSpec("s1", "h:new"), ServerSpec("s4", "h:4")])
    assert not created and pool.strategy is strategy
    assert sorted(pool.servers) == ["s1", "s4"]
    assert pool.servers["s1"].address == "h:new"
    assert pool.servers["s1"].in_flight == (1 if d.server.id == "s1" else 0)
    pool, _ = core.configure_pool(PoolSettings(name="api", strategy="least_connections"), None)
    assert pool.strategy is not strategy and sorted(pool.servers) == ["s1", "s4"]


def test_pool_and_server_caps() -> None:
    core = DecisionCore(CoreLimits(max_pools=1, max_servers_per_pool=2), clock=ManualClock())
    core.configure_pool(PoolSettings(name="a"), None)
    with pytest.raises(ResourceExhausted, match="max_pools"):
        core.configure_pool(PoolSettings(name="b"), None)
    core.register_server("a", ServerSpec("x", "h:1"))
    core.register_server("a", ServerSpec("y", "h:2"))
    core.register_server("a", ServerSpec("y", "h:3"))  # update, not a new server
    with pytest.raises(ResourceExhausted, match="max_servers_per_pool"):
        core.register_server("a", ServerSpec("z", "h:4"))


def test_deregister_and_delete() -> None:
    core = make_core(ManualClock())
    d = core.select("api")
    core.deregister_server("api", d.server.id)
    with pytest.raises(NotFound):
        core.deregister_server("api", d.server.id)
    # The outcome of a decision on a removed server is still accepted, harmlessly.
    assert core.report_outcomes([OutcomeReport(d.decision_id, True, 1.0)]) == (1, [], 0)
    core.delete_pool("api")
    with pytest.raises(NotFound):
        core.delete_pool("api")


def test_pending_decisions_validate_arguments() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        PendingDecisions(0, 10)
    with pytest.raises(ValueError, match="capacity"):
        PendingDecisions(1, 0)


def test_ids_are_unique_and_prefixed() -> None:
    ids = IdGenerator()
    other = IdGenerator()
    batch = {ids.new() for _ in range(1000)}
    assert len(batch) == 1000
    assert ids.new().split("-")[0] != other.new().split("-")[0]


def test_tabular_agent_refuses_large_pools_naming_the_alternative() -> None:
    from loadwarden.policy._errors import InvalidArgument

    core = DecisionCore(clock=ManualClock())
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in range(11)]
    with pytest.raises(InvalidArgument) as err:
        core.configure_pool(PoolSettings(name="big", strategy="q_learning"), specs)
    assert err.value.field == "pool.strategy" and "q_linear" in str(err.value) and "11 servers" in str(err.value)
    core.configure_pool(PoolSettings(name="big", strategy="q_learning"), specs[:10])
    with pytest.raises(ResourceExhausted, match="q_linear"):
        core.register_server("big", specs[10])
    core.register_server("big", ServerSpec("s0", "h:new"))  # updating an existing server is fine
    core.configure_pool(PoolSettings(name="big", strategy="q_linear"), specs)
    core.register_server("big", specs[10])
