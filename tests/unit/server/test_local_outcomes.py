"""Outcomes of decisions clients made locally: the core learns from them as from its own."""

from __future__ import annotations

import random

import pytest

from loadwarden.policy import LocalChoice
from loadwarden.policy._decisions import IdGenerator
from loadwarden.policy._errors import NotFound
from loadwarden.policy._model import LoadSample
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine._core import LoadReportIn, OutcomeReport


def make_core(strategy: str, clock: ManualClock, **params: object) -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=clock, rng=random.Random(3), ids=IdGenerator("t"))
    specs = [ServerSpec(f"s{i}", f"h:{i}") for i in (1, 2, 3)]
    core.configure_pool(PoolSettings(name="api", strategy=strategy, strategy_params=params), specs)
    for i, cpu in ((1, 20.0), (2, 50.0), (3, 80.0)):
        core.report_load([LoadReportIn("api", f"s{i}", LoadSample(cpu, 10.0, i, 5.0 * i, 0.0))])
    return core


LATENCY = {"s1": 20.0, "s2": 60.0, "s3": 150.0}


def test_local_outcomes_move_q_linear_as_central_outcomes_do() -> None:
    """The same decisions taught centrally and as local outcomes (their memo sent back as
    features) leave the two cores with the same weights and biases."""
    central, remote = make_core("q_linear", ManualClock()), make_core("q_linear", ManualClock())
    for _ in range(200):
        choice = central.select("api")
        pending = central.pending._items.get(choice.decision_id)
        assert pending is not None
        features, state = central.pool("api").strategy.memo_wire(pending.memo)
        ok = choice.server.id != "s3"
        central.report_outcomes([OutcomeReport(choice.decision_id, ok, LATENCY[choice.server.id])])
        local = LocalChoice("api", choice.server.id, features, state)
        assert remote.report_outcomes([OutcomeReport("", ok, LATENCY[choice.server.id], local=local)]).applied == 1
    learned, taught = central.pool("api").strategy.snapshot(), remote.pool("api").strategy.snapshot()
    assert learned is not None and taught is not None
    assert taught["weights"] == pytest.approx(learned["weights"])
    assert taught["biases"] == pytest.approx(learned["biases"])
    assert taught["updates"] == learned["updates"] == 200


def test_local_outcomes_count_nothing_in_flight_and_can_eject() -> None:
    core = make_core("round_robin", ManualClock())
    s2 = core.pool("api").servers["s2"]
    for _ in range(5):
        core.report_outcomes([OutcomeReport("", False, 9.0, local=LocalChoice("api", "s2"))])
    assert s2.in_flight == 0 and s2.outcomes_total == 5 and s2.error_rate > 0.6
    assert s2.ejected_until > 0  # five failures in a row eject it, for every client's next table


def test_q_learning_learns_from_a_state_a_client_saw_and_ignores_a_foreign_one() -> None:
    core = make_core("q_learning", ManualClock())
    strategy = core.pool("api").strategy
    core.report_outcomes([OutcomeReport("", True, 30.0, local=LocalChoice("api", "s1", state="s1=0,s2=1,s3=2"))])
    assert strategy.stats()["updates"] == 1
    for foreign in ("s1=0,s2=1", "s1=0,s2=1,s9=2", "garbage", ""):
        core.report_outcomes([OutcomeReport("", True, 30.0, local=LocalChoice("api", "s1", state=foreign))])
    assert strategy.stats()["updates"] == 1 and strategy.stats()["episodes"] == 5


def test_peak_ewma_learns_latency_from_local_outcomes() -> None:
    core = make_core("peak_ewma", ManualClock())
    core.report_outcomes([OutcomeReport("", True, 80.0, local=LocalChoice("api", "s3"))])
    published = core.pool("api").strategy.published()
    assert published is not None and published["estimates"] == {"s3": 80.0}


def test_every_local_outcome_unknown_is_not_found_naming_the_first() -> None:
    core = make_core("round_robin", ManualClock())
    with pytest.raises(NotFound) as err:
        core.report_outcomes([OutcomeReport("", True, 1.0, local=LocalChoice("gone", "s1"))])
    assert err.value.field == "outcomes[0].local.server_id"
    applied = core.report_outcomes(
        [
            OutcomeReport("", True, 1.0, local=LocalChoice("api", "s1")),
            OutcomeReport("", True, 1.0, local=LocalChoice("api", "s7")),
            OutcomeReport("t-1-nope", True, 1.0),
        ]
    )
    assert applied == (1, ["t-1-nope"], 1)


def test_a_sampled_local_outcome_counts_for_its_weight() -> None:
    core = make_core("round_robin", ManualClock())
    core.report_outcomes([OutcomeReport("", True, 4.0, local=LocalChoice("api", "s1", weight=50.0))])
    s1 = core.pool("api").servers["s1"]
    assert s1.outcomes_total == 50 and s1.ewma_latency_ms == 4.0
