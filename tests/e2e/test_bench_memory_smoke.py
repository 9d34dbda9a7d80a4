"""The memory benchmark keeps running at a small size; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e

SERVERS, POOLS, LEASES, CHURN, SELECTS = 100, 2, 1_000, 200, 100


def test_memory_bench_prints_its_json_shape() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "memory.py"),
            "--servers",
            str(SERVERS),
            "--pools",
            str(POOLS),
            "--leases",
            str(LEASES),
            "--churn",
            str(CHURN),
            "--selects",
            str(SELECTS),
            "--concurrency",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)

    assert report["benchmark"] == "memory"
    assert (report["servers"], report["pools"], report["leases"], report["churn"]) == (SERVERS, POOLS, LEASES, CHURN)
    rss = report["rss_mb"]
    assert set(rss) == {"start", "after_servers", "after_churn", "after_leases", "after_selects", "peak"}
    assert all(isinstance(v, float) and v > 0 for v in rss.values()), rss
    assert rss["peak"] >= max(v for k, v in rss.items() if k != "peak"), rss
    assert report["fill_s"]["servers_s"] >= 0 and report["fill_s"]["churn_s"] > 0 and report["fill_s"]["leases_s"] > 0
    # The service really holds what the benchmark says it measured.
    assert report["service_counts"] == {
        "servers_registered": SERVERS,
        "leases_churned": CHURN,
        "leases_granted": LEASES,
        "active_leases": LEASES,
        "pending_decisions": 0,
    }
    assert set(report["select_us"]) == {"10", str(SERVERS // POOLS)}
    for cell in report["select_us"].values():
        assert cell["calls"] == SELECTS and 0 < cell["p50_us"] <= cell["p99_us"], cell
    assert report["target_mb"] == 200.0 and isinstance(report["under_target"], bool)
