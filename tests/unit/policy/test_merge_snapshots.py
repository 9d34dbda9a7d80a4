"""Replicas' learned state merges as a weighted average that the strategy takes back."""

from __future__ import annotations

import random

import pytest

from loadwarden.policy import Backend, ManualClock
from loadwarden.policy.strategies import Feedback, StrategyContext, build_strategy, merge_snapshots


def head(**body: object) -> dict[str, object]:
    return {"strategy": "q_learning", "version": 1, "epsilon": 0.1, "episodes": 1, "updates": 1, "explored": 0, **body}


def test_numbers_are_averaged_by_weight_and_a_lone_value_is_kept() -> None:
    a = head(epsilon=0.2, updates=10, q_table={"s": {"x": 1.0, "y": 4.0}})
    b = head(epsilon=0.1, updates=30, q_table={"s": {"x": 3.0}, "t": {"x": 5.0}})
    merged = merge_snapshots([(a, 1.0), (b, 3.0)])
    assert merged["q_table"] == {"s": {"x": 2.5, "y": 4.0}, "t": {"x": 5.0}}
    assert merged["epsilon"] == pytest.approx(0.125)
    assert merged["updates"] == 30  # counters take the largest, never a sum counted at every merge


def test_zero_weights_count_alike_and_one_snapshot_is_itself() -> None:
    a, b = head(q_table={"s": {"x": 0.0}}), head(q_table={"s": {"x": 2.0}})
    assert merge_snapshots([(a, 0.0), (b, 0.0)])["q_table"] == {"s": {"x": 1.0}}
    assert merge_snapshots([(a, 5.0)]) == a
    with pytest.raises(ValueError, match="entries"):
        merge_snapshots([])


@pytest.mark.parametrize("strategy", ["q_learning", "q_linear"])
def test_two_learners_merged_restore_into_either(strategy: str) -> None:
    clock = ManualClock()
    learners = []
    for seed in (1, 2):
        servers = {sid: Backend(sid, f"h:{i}", 1) for i, sid in enumerate(("a", "b"))}
        learner = build_strategy(strategy, {}, StrategyContext(clock, random.Random(seed), servers), "pools.p")
        rng = random.Random(seed)
        for _ in range(50):
            server, _, memo = learner.choose(list(servers.values()))
            learner.observe(Feedback(server, rng.random() < 0.8, rng.uniform(5, 50), memo))
        learners.append(learner)
    snapshots = [learner.snapshot() for learner in learners]
    assert all(s is not None for s in snapshots)
    merged = merge_snapshots([(s, 1.0) for s in snapshots if s is not None])
    for learner in learners:
        learner.restore(merged)
        assert learner.snapshot() == learners[0].snapshot()
