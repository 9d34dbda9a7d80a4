"""The admission benchmark keeps running; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e


def test_admission_bench_prints_its_json_shape() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "admission.py"),
            "--seconds",
            "0.5",
            "--capacity",
            "2",
            "--work-ms",
            "20",
            "--wait-ms",
            "50",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["benchmark"] == "admission"
    assert report["scenario"]["capacity"] == 2 and report["scenario"]["priorities"] == [0, 5, 9]
    results = report["results"]
    for key in ("offered_rate_per_s", "target_rate_per_s", "capacity_per_s", "goodput_per_s", "drain_s"):
        assert isinstance(results[key], int | float) and results[key] >= 0, key
    assert results["offered"] > 0 and 0 < results["admitted"] <= results["offered"]
    assert results["admitted_latency_ms"]["p99"] >= results["admitted_latency_ms"]["p50"] > 0
    assert set(results["admission_overhead_ms"]) == {"p50", "p99"}
    assert all(isinstance(n, int) and n > 0 for n in results["denials"].values())
    per_priority = results["per_priority"]
    assert set(per_priority) == {"0", "5", "9"}
    for cell in per_priority.values():
        assert cell["admitted"] + cell["denied"] == cell["offered"]
        assert set(cell["queue_wait_ms"]) == {"p50", "p99"}
    assert sum(c["offered"] for c in per_priority.values()) == results["offered"]
    assert sum(c["denied"] for c in per_priority.values()) == sum(results["denials"].values())
    # Correctness, not speed: the clients never held more slots than the pool has, and nothing leaked.
    assert 1 <= results["max_concurrency_observed"] <= 2 and results["within_capacity"] is True
    assert results["after"] == {"active_leases": 0, "queue_length": 0}
