"""The selection-cost benchmark keeps running at a tiny size; its numbers are read by people, never asserted on."""

from __future__ import annotations

import pytest

from loadwarden.policy.strategies import STRATEGIES

from ._harness import run_bench

pytestmark = pytest.mark.e2e

SMALL, LARGE, ROUNDS, DECISIONS = 3, 20, 2, 30


def test_selection_cost_bench_prints_its_json_shape() -> None:
    report = run_bench(
        "selection_cost.py",
        *("--small", str(SMALL), "--large", str(LARGE)),
        *("--rounds", str(ROUNDS), "--decisions", str(DECISIONS), "--in-flight", "4"),
        timeout_s=120,
    )

    assert report["benchmark"] == "selection_cost"
    assert {"cpus", "python", "platform"} <= set(report["machine"])
    assert report["settings"]["small"] == SMALL and report["settings"]["large"] == LARGE
    assert report["settings"]["rounds"] == ROUNDS and report["settings"]["decisions_per_round"] == DECISIONS
    assert list(report["results"]) == list(STRATEGIES)
    for name, by_weighting in report["results"].items():
        assert set(by_weighting) == {"mixed", "equal"}, name
        limit = STRATEGIES[name].max_servers
        for cell in by_weighting.values():
            assert cell[str(SMALL)]["median_us"] > 0, (name, cell)
            if limit is not None and limit < LARGE:  # q_learning: tabular, at most 10 servers
                assert "not applicable" in cell[str(LARGE)]["not_applicable"] and cell["ratio"] is None
            else:
                assert cell[str(LARGE)]["median_us"] > 0 and cell["ratio"] > 0, (name, cell)
                assert isinstance(cell["under_target"], bool)
    assert report["target_ratio"] == 2.0 and isinstance(report["under_target"], bool)
    assert report["max_ratio"] > 0
