"""The local-decisions benchmark keeps running; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e


def test_local_decisions_bench_prints_its_json_shape() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "local_decisions.py"), "--seconds", "0.3", "--in-flight", "4"],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for mode in ("central", "local"):
        cell = report[mode]
        assert cell["decisions"] > 0 and cell["outcomes_dropped"] == 0, mode
        assert cell["decision_us"]["p99"] >= cell["decision_us"]["p50"] > 0, mode
    assert report["local"]["local_share"] > 0.5  # the local run decided from the pushed table
    assert report["unary"]["selects"] > 0 and report["stream"]["selects"] > 0
    for flavour in ("sync", "async"):
        assert all(cell["cycles"] > 0 for cell in report["slot"][flavour].values()), flavour
    assert set(report["ratios"]) >= {"local_over_central_rate", "stream_over_unary_rate", "slot_over_today"}
