"""The routing-quality benchmark keeps running; its numbers are read by people, never asserted on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loadwarden.policy.strategies import STRATEGIES

from ._harness import REPO, clean_env

pytestmark = pytest.mark.e2e

SCRIPT = str(REPO / "bench" / "routing_quality.py")


def bench(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, SCRIPT, "--requests", "400", "--seed", "3", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_routing_quality_bench_prints_its_json_shape() -> None:
    report = json.loads(bench("--load", "0.5"))

    assert report["benchmark"] == "routing_quality"
    assert report["scenario"]["requests"] == 400 and report["scenario"]["load"] == 0.5
    ids = [s["id"] for s in report["scenario"]["servers"]]
    assert [s["speed"] for s in report["scenario"]["servers"]] == [1, 1, 2, 2, 4]
    assert list(report["results"]) == list(STRATEGIES)
    for name, cell in report["results"].items():
        assert "error" not in cell, f"{name}: {cell.get('error')}"
        assert cell["p999_ms"] >= cell["p99_ms"] >= cell["p50_ms"] > 0 and cell["mean_ms"] > 0
        assert set(cell["share"]) == set(ids) and sum(cell["share"].values()) == pytest.approx(1, abs=0.001)
        assert cell["select_us"] > 0 and cell["outcome_us"] > 0


def test_routing_quality_bench_prints_a_markdown_table() -> None:
    lines = bench("--markdown").splitlines()

    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| strategy | mean ms | p50 ms | p99 ms |")
    assert [row.split(" | ")[0].removeprefix("| ") for row in table[2:]] == list(STRATEGIES)
