"""``loadwarden simulate`` as a real process: a tiny scenario end to end, and bad files refused up front."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from ._harness import Proc, Processes, tool

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 120.0
TINY = """\
name = "tiny"
description = "three backends, one slow"
seed = 5
strategies = ["round_robin", "least_connections"]
warmup_s = 1
timeout_ms = 500
load_report_interval_ms = 200

[traffic]
load = 0.7
requests = 3000

[[backends]]
id = "fast"
count = 2
speed = 3
base_ms = 20

[[backends]]
id = "slow"
base_ms = 20
"""
REPORT_FILES = {"report.md", "report.json", "summary.csv", "requests.csv"}
PLOT_FILES = {
    "latency_over_time.png",
    "throughput_over_time.png",
    "server_distribution.png",
    "learning_curve.png",
    "latency_histogram.png",
    "summary.png",
}


def simulate(processes: Processes, *args: str | Path) -> tuple[int, Proc]:
    proc = processes.spawn([tool("loadwarden"), "simulate", *args])
    return proc.wait(RUN_TIMEOUT_S), proc


def test_a_tiny_scenario_prints_the_table_and_writes_every_file(processes: Processes, tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"

    rc, proc = simulate(processes, scenario, "--out", out)

    assert rc == 0, proc.describe()
    stdout = proc.stdout.text
    assert (
        "| strategy | requests | mean ms | std ms | p50 ms | p95 ms | p99 ms | p99.9 ms | throughput /s "
        "| success % | CV |" in stdout
    )
    assert "| round_robin | " in stdout and "| least_connections | " in stdout
    assert "| strategy | fast-0 | fast-1 | slow |" in stdout and "Best p99: **" in stdout
    assert {p.name for p in out.iterdir()} == REPORT_FILES | PLOT_FILES
    for name in sorted(REPORT_FILES | PLOT_FILES):
        assert f"wrote {out / name}" in stdout
    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert [run["strategy"] for run in report["runs"]] == ["round_robin", "least_connections"]
    assert all(run["records"] == 3000 for run in report["runs"])
    assert report["meta"]["timing"]["round_robin"]["requests"] == 3000
    assert (out / "report.md").read_text() in stdout
    assert len((out / "requests.csv").read_text().splitlines()) == 1 + 2 * 3000
    assert "round_robin: 3,000 requests in" in proc.stderr.text  # the timing line


def test_options_override_the_file(processes: Processes, tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"

    rc, proc = simulate(
        processes, scenario, "--out", out, "--strategies", "p2c", "--requests", "500", "--seed", "9", "--no-plots"
    )

    assert rc == 0, proc.describe()
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    report = json.loads((out / "report.json").read_text())
    assert [run["strategy"] for run in report["runs"]] == ["p2c"]
    assert report["runs"][0]["records"] == 500 and report["scenario"]["seed"] == 9


def test_decisions_run_each_strategy_centrally_and_locally_side_by_side(processes: Processes, tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(TINY, encoding="utf-8")
    out = tmp_path / "out"

    rc, proc = simulate(
        processes, scenario, "--out", out, "--decisions", "central,local", "--clients", "2", "--no-plots"
    )

    assert rc == 0, proc.describe()
    report = json.loads((out / "report.json").read_text())
    assert [(run["strategy"], run["decisions"]) for run in report["runs"]] == [
        ("round_robin", "central"),
        ("round_robin", "local"),
        ("least_connections", "central"),
        ("least_connections", "local"),
    ]
    assert report["scenario"]["clients"] == 2
    for run in report["runs"]:
        assert run["counters"].get("local", 0) == (3000 if run["decisions"] == "local" else 0)
    assert [m["strategy"] for m in report["local_vs_central"]] == ["round_robin", "least_connections"]
    assert re.search(r"^\| round_robin \| local \| [\d,]+ \|", proc.stdout.text, re.MULTILINE), proc.stdout.text
    assert "Local against central decisions:" in proc.stdout.text
    assert "least_connections (local): 3,000 requests in" in proc.stderr.text


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t.replace('"least_connections"', '"fastest_first"'), "strategies[1]"),
        (lambda t: t.replace("load = 0.7", "rate_per_s = -5"), "traffic.rate_per_s"),
        (lambda t: t[: t.index("[[backends]]")], "backends"),
        (lambda t: t.replace("seed = 5", 'seed = 5\ncolour = "red"'), "colour"),
        (
            lambda t: t.replace(
                'strategies = ["round_robin", "least_connections"]', 'mode = "slot"\nstrategies = ["fixed"]'
            ),
            "mode",
        ),
        (lambda t: t.replace("seed = 5", 'seed = 5\ndecisions = ["central", "edge"]'), "decisions[1]"),
        (lambda t: t.replace("seed = 5", "seed = 5\nclients = 2"), "clients"),
    ],
)
def test_a_bad_file_exits_2_naming_the_key_and_writes_nothing(
    processes: Processes, tmp_path: Path, edit: Callable[[str], str], key: str
) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text(edit(TINY), encoding="utf-8")
    out = tmp_path / "out"

    rc, proc = simulate(processes, scenario, "--out", out)

    assert rc == 2, proc.describe()
    lines = proc.stderr.text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"loadwarden simulate: {scenario}: {key}: "), proc.describe()
    if key == "mode":
        assert "loadwarden evaluate" in lines[0]
    assert proc.stdout.text == "" and not out.exists()
