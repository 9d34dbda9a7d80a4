"""The batch-sizing benchmark keeps running; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = str(REPO / "bench" / "batching.py")
FIXED = ["fixed_5", "fixed_10", "fixed_25", "fixed_50", "fixed_75", "fixed_100"]


def bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, SCRIPT, "--duration-s", "30", "--seed", "3", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_batching_bench_prints_its_json_shape() -> None:
    out = bench()
    report = json.loads(out)

    assert report["benchmark"] == "batching"
    scenario = report["scenario"]
    assert scenario["seed"] == 3 and scenario["duration_s"] == 30
    assert scenario["fixed_sizes"] == [5, 10, 25, 50, 75, 100]
    assert [c[1] for c in scenario["profile"]["corners"]] == [10, 10, 95, 95, 10, 10]
    assert scenario["dynamic"]["threshold"]["mode"] == "threshold"
    assert scenario["dynamic"]["latency_target"]["target_latency_ms"] == 500
    assert list(report["results"]) == ["threshold", "latency_target", *FIXED]
    for name, r in report["results"].items():
        assert r["elapsed_s"] >= 30 and r["batches"] > 0, name
        assert r["items"] == pytest.approx(r["mean_size"] * r["batches"], rel=0.01), name
        assert r["max_batch_ms"] >= r["p99_batch_ms"] >= r["p95_batch_ms"] >= r["p50_batch_ms"] > 0, name
        assert r["throughput_items_per_s"] > 0 and set(r["throughput_by_phase"]) == {"low", "medium", "high"}, name
        assert 5 <= r["mean_size"] <= 100, name
    for n, name in zip([5, 10, 25, 50, 75, 100], FIXED, strict=True):
        assert report["results"][name]["mean_size"] == n and report["results"][name]["adjustments"] == 0
    best = report["best_fixed"]
    assert best["by_throughput"] in FIXED and best["by_p95"] in FIXED
    assert set(best["by_throughput_within_p95_of"]) == {"threshold", "latency_target"}
    assert all(v is None or v in FIXED for v in best["by_throughput_within_p95_of"].values())
    # Simulated time and seeded noise only: the same seed prints the same report.
    assert bench() == out


def test_batching_bench_prints_a_markdown_table() -> None:
    lines = bench("--markdown").splitlines()

    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| policy | items/s | p50 batch ms | p95 batch ms |")
    assert [row.split(" | ")[0].removeprefix("| ") for row in table[2:]] == ["threshold", "latency_target", *FIXED]
    assert any(line.startswith("Best fixed size by throughput: fixed_") for line in lines)
