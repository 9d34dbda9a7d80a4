"""The watch-load benchmark keeps running at a small size; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e

SERVERS, STREAMS, SELECTS = 200, 5, 100


def test_watch_bench_prints_its_json_shape() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "watch_load.py"),
            "--servers",
            str(SERVERS),
            "--streams",
            str(STREAMS),
            "--selects",
            str(SELECTS),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["benchmark"] == "watch_load"
    assert (report["servers"], report["streams"], report["interval_ms"]) == (SERVERS, STREAMS, 1_000)
    phases = report["select_small_pool"]
    assert set(phases) == {"without_streams", "with_streams"}
    for cell in phases.values():
        assert cell["calls"] == SELECTS and 0 < cell["p50_us"] <= cell["p99_us"], cell
    assert report["p99_ratio"] > 0 and report["target_ratio"] == 2.0 and isinstance(report["within_target"], bool)
    received = report["watch_received"]
    assert received["snapshots"] >= 0 and received["bytes"] >= 0 and received["seconds"] > 0
