"""Seed 002's reverse-proxy example (``examples/seed002_proxy``), its short version run as documented
against a real ``loadwarden serve``: its backends, proxy and traffic on ports of 127.0.0.1 it
picks itself. The outputs are checked against each other and against the service's pools."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadwarden.sdk import Client

from ._harness import REPO, Processes

pytestmark = pytest.mark.e2e

STRATEGIES = ["round_robin", "least_connections", "q_learning"]
SERVERS = ["server1", "server2", "server3"]
PLOTS = [
    "latency_over_time.png",
    "throughput.png",
    "server_distribution.png",
    "learning_curve.png",
    "latency_histogram.png",
    "summary.png",
]
HEALTH_STATUSES = {"healthy", "degraded", "unhealthy", "unreachable"}
RUN_TIMEOUT_S = 150.0  # the quick run takes ~20 s on a quiet machine; a deadline, not a speed check


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as source:
        return list(csv.DictReader(source))


@pytest.fixture
def outputs(processes: Processes, tmp_path: Path) -> tuple[Path, str, str]:
    """Runs ``python -m examples.seed002_proxy --quick`` against a fresh service; returns (out dir, stdout, target)."""
    service = processes.serve(None)
    out = tmp_path / "seed002"
    example = processes.spawn(
        [sys.executable, "-m", "examples.seed002_proxy", "--quick", "--target", service.target, "--out", out],
        env={"PYTHONPATH": str(REPO)},  # `examples` from the repository, as the README's command from its root
    )
    rc = example.wait(RUN_TIMEOUT_S)
    assert rc == 0, example.describe()
    assert "Traceback" not in example.stderr.text, example.describe()
    return out, example.stdout.text, service.target


def test_seed002_example_compares_the_three_strategies_and_names_the_best_by_the_rule(
    outputs: tuple[Path, str, str],
) -> None:
    out, stdout, target = outputs
    for name in ["report.md", "report.json", "requests.csv", "server_metrics.csv", *PLOTS]:
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    report: dict[str, Any] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    runs = {run["strategy"]: run for run in report["strategies"]}
    assert [run["strategy"] for run in report["strategies"]] == STRATEGIES
    assert report["server_ids"] == SERVERS

    # requests.csv holds every request of the report, once: its ids are unique.
    rows = read_csv(out / "requests.csv")
    assert list(rows[0])[:5] == ["request_id", "strategy", "server", "latency_ms", "status"]
    assert len(rows) == report["requests"] == sum(run["requests"] for run in runs.values())
    assert len({row["request_id"] for row in rows}) == len(rows)
    for strategy, run in runs.items():
        mine = [row for row in rows if row["strategy"] == strategy]
        assert len(mine) == run["requests"] > 0
        assert run["requests"] <= run["sent"]  # a request the proxy never saw is the client's error only
        # The report's figures are those of its rows.
        routed = [float(row["latency_ms"]) for row in mine if row["server"]]
        assert run["p99_ms"] == pytest.approx(nearest_rank(routed, 0.99), abs=1e-3)
        assert run["p50_ms"] == pytest.approx(nearest_rank(routed, 0.50), abs=1e-3)
        ok = sum(row["status"] == "200" for row in mine)
        assert run["success_rate"] == pytest.approx(ok / len(mine), abs=1e-6)
        assert run["server_distribution"] == {sid: sum(row["server"] == sid for row in mine) for sid in SERVERS}
        assert run["statuses"] == dict(Counter(row["status"] for row in mine))
        assert run["std_ms"] is not None and run["std_ms"] >= 0 and run["throughput_per_s"] > 0

    # The best: lowest p99 among the strategies within one point of the best success rate.
    top = max(run["success_rate"] for run in runs.values())
    eligible = {name: run for name, run in runs.items() if run["success_rate"] >= top - 0.01}
    best = report["best"]["strategy"]
    assert best in eligible, report["best"]
    assert runs[best]["p99_ms"] == min(run["p99_ms"] for run in eligible.values())
    assert sorted(report["best"]["eligible"]) == sorted(eligible)
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "within 1 point of the best success rate" in markdown and f"**{best}**" in markdown
    assert f"best: {best}\n" in stdout

    # Q-learning learned: the service's strategy stats count the outcomes it learned from.
    q_stats = runs["q_learning"]["strategy_stats"]
    assert q_stats["episodes"] > 0 and q_stats["updates"] > 0 and q_stats["table_size"] >= 1, q_stats

    # The collector polled every backend's /health in every run.
    health = read_csv(out / "server_metrics.csv")
    assert {row["status"] for row in health} <= HEALTH_STATUSES
    for strategy in STRATEGIES:
        answered = {row["server"] for row in health if row["strategy"] == strategy and row["status"] != "unreachable"}
        assert answered == set(SERVERS), strategy

    # The pools the example made on the service run the strategies it compared.
    with Client(target) as client:
        pools = {pool.name: pool for pool in client.load_status().pools}
    for strategy in STRATEGIES:
        pool = pools[f"seed002-{strategy}"]
        assert pool.strategy == strategy and sorted(s.id for s in pool.servers) == SERVERS
        assert sum(s.selections_total for s in pool.servers) > 0
