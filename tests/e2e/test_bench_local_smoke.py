"""The local-decisions benchmark keeps running; its numbers are read by people, never asserted on."""

from __future__ import annotations

import pytest

from ._harness import run_bench

pytestmark = pytest.mark.e2e


def test_local_decisions_bench_prints_its_json_shape() -> None:
    report = run_bench("local_decisions.py", "--seconds", "0.3", "--in-flight", "4")
    for mode in ("central", "local"):
        cell = report[mode]
        assert cell["decisions"] > 0 and cell["outcomes_dropped"] == 0, mode
        assert cell["decision_us"]["p99"] >= cell["decision_us"]["p50"] > 0, mode
    assert report["local"]["local_share"] > 0.5  # the local run decided from the pushed table
    assert report["unary"]["selects"] > 0 and report["stream"]["selects"] > 0
    for flavour in ("sync", "async"):
        assert all(cell["cycles"] > 0 for cell in report["slot"][flavour].values()), flavour
    assert set(report["ratios"]) >= {"local_over_central_rate", "stream_over_unary_rate", "slot_over_today"}
