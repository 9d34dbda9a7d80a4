"""The shared-store benchmark keeps running; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._harness import REPO, clean_env, redis_server_binary

pytestmark = pytest.mark.e2e


def test_shared_store_bench_prints_its_json_shape() -> None:
    redis_server_binary()  # a missing redis-server fails here, with the fix to apply
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "shared_store.py"),
            *("--seconds", "0.3", "--clients", "2"),
            "--handoffs",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["benchmark"] == "shared_store"
    results = report["results"]
    for name in ("select", "acquire_release"):
        cell = results[name]
        assert cell["memory_per_s"] > 0 and cell["redis_per_s"] > 0 and cell["ratio"] > 0, name
    assert results["select"]["redis_commands_per_select"] >= 0
    assert results["two_replicas"]["one_per_s"] > 0 and results["two_replicas"]["two_per_s"] > 0
    handoff = results["handoff"]
    assert handoff["rounds"] == 5 and 0 < handoff["p50_ms"] <= handoff["p99_ms"] <= handoff["max_ms"]
