"""Benchmarks must keep running; their numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e


def test_decision_rpc_bench_prints_its_json_shape() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "decision_rpc.py"),
            "--seconds",
            "0.2",
            "--rounds",
            "1",
            "--concurrency",
            "1,4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    modes = {"empty_raw", "select_raw", "select_sdk", "route_sdk"}
    assert set(report["results"]) == modes
    for mode in modes:
        for level in ("1", "4"):
            cell = report["results"][mode][level]
            assert cell["calls"] > 0 and cell["calls_per_s"] > 0 and cell["p99_ms"] >= cell["p50_ms"] > 0
    assert set(report["throughput_ratio_vs_empty"]) == modes - {"empty_raw"}
