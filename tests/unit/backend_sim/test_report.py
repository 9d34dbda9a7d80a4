"""The report: the Markdown table's columns, JSON and CSV round trips, CV, warm-up, comparison."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from loadwarden.backend_sim import (
    Report,
    RequestLog,
    RequestRecord,
    StrategyRun,
    parse_scenario,
    render_markdown,
    summarize,
    write_report,
)
from loadwarden.backend_sim._summary import coefficient_of_variation

COLUMNS = [
    "strategy",
    "requests",
    "mean ms",
    "std ms",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "p99.9 ms",
    "throughput /s",
    "success %",
    "CV",
]


def spec(servers: int = 3, warmup_s: float = 0.0, **extra: Any) -> Any:
    return parse_scenario(
        {
            "name": "unit",
            "strategies": ["round_robin", "least_connections"],
            "warmup_s": warmup_s,
            "traffic": {"rate_per_s": 10, "requests": 100},
            "backends": [{"id": "s", "count": servers}],
            **extra,
        },
        "unit.toml",
    )


def records(pattern: list[tuple[str, float, bool]], start_s: float = 0.0) -> list[RequestRecord]:
    """One request per entry, 0.125 s apart (exact in binary and in 6 decimals)."""
    return [
        RequestRecord(start_s + i * 0.125, server, latency, ok, i % 7 == 0)
        for i, (server, latency, ok) in enumerate(pattern)
    ]


def table_rows(markdown: str, first_cell: str = "strategy") -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def two_runs(s: Any = None) -> Report:
    s = s or spec()
    ids = tuple(x.id for x in s.servers)
    rr = records([(ids[i % 3], 10.0 + i, True) for i in range(100)])
    lc = records([(ids[0] if i % 2 else ids[1], 5.0 + i % 10, i != 3) for i in range(100)])
    return Report(
        s,
        (
            StrategyRun("round_robin", rr, ids, counters={"timed_out": 2}),
            StrategyRun("least_connections", RequestLog.from_records(lc, ids), ids, strategy_stats={"epsilon": 0.1}),
        ),
    )


def test_the_table_has_every_column_and_one_row_per_strategy() -> None:
    report = two_runs()

    markdown = render_markdown(report)

    rows = table_rows(markdown)
    assert rows[0][: len(COLUMNS)] == COLUMNS and rows[0][-1] == "notes"
    assert [row[0] for row in rows[2:]] == ["round_robin", "least_connections"]
    rr = report.summary("round_robin")
    assert rr is not None
    assert rows[2][1:11] == [
        "100",
        f"{rr.mean_ms:.1f}",
        f"{rr.std_ms:.1f}",
        f"{rr.p50_ms:.1f}",
        f"{rr.p95_ms:.1f}",
        f"{rr.p99_ms:.1f}",
        f"{rr.p999_ms:.1f}",
        f"{rr.throughput_per_s:,.1f}",
        "100.00",
        f"{rr.cv:.3f}",
    ]
    assert rows[2][-1] == "timed out 2" and rows[3][-1] == ""
    shares = table_rows(markdown, "strategy | s-0")
    assert shares[0] == ["strategy", "s-0", "s-1", "s-2"]
    assert shares[2][1:] == ["34.0", "33.0", "33.0"] and shares[3][1:] == ["50.0", "50.0", "0.0"]
    assert "Best p99: **least_connections**" in markdown
    assert "round robin 108.0 ms" in markdown  # nearest rank: the 99th of 10..109 ms


def test_many_servers_get_min_median_max_share_columns() -> None:
    s = spec(servers=20)
    ids = tuple(x.id for x in s.servers)
    run = StrategyRun("round_robin", records([(ids[i % 10], 5.0, True) for i in range(100)]), ids)

    markdown = render_markdown(Report(s, (run,)))

    rows = table_rows(markdown)
    assert rows[0][len(COLUMNS) :] == ["share min %", "share median %", "share max %"]
    assert rows[2][len(COLUMNS) :] == ["0.000", "5.000", "10.000"]
    assert "strategy | s-0" not in markdown


def test_cv_of_per_server_counts_on_a_hand_made_example() -> None:
    # Counts 2, 1, 1, 0: mean 1, population variance (1 + 0 + 0 + 1) / 4 = 0.5, CV = sqrt(0.5).
    rs = records([("a", 1.0, True), ("b", 1.0, True), ("a", 1.0, True), ("c", 1.0, True)])

    summary = summarize(rs, ["a", "b", "c", "d"])

    assert summary.cv == pytest.approx(math.sqrt(0.5))
    assert coefficient_of_variation([3, 3, 3]) == 0.0 and coefficient_of_variation([]) == 0.0
    assert coefficient_of_variation([0, 4]) == pytest.approx(1.0)


def test_requests_that_reached_no_server_count_as_failures_not_latencies() -> None:
    rs = records([("a", 10.0, True), ("", 0.0, False), ("b", 30.0, True), ("", 0.0, False)])

    summary = summarize(rs, ["a", "b"])

    assert (summary.requests, summary.unrouted) == (4, 2)
    assert summary.success_rate == 0.5 and summary.mean_ms == 20.0 and summary.p50_ms == 10.0
    assert summary.std_ms == 10.0  # population: latencies 10 and 30 around 20; unrouted ones left out
    assert summary.share == {"a": 0.5, "b": 0.5}
    nothing = summarize(records([("", 0.0, False)]), ["a"])
    assert nothing.unrouted == 1 and math.isnan(nothing.p99_ms) and nothing.as_dict()["p99_ms"] is None
    assert nothing.as_dict()["std_ms"] is None


def test_warmup_leaves_out_early_arrivals() -> None:
    s = spec(warmup_s=5.0)
    ids = tuple(x.id for x in s.servers)
    early = records([(ids[0], 1000.0, False)] * 40)  # t < 5 s
    late = records([(ids[1], 10.0, True)] * 60, start_s=5.0)

    report = Report(s, (StrategyRun("round_robin", early + late, ids),))

    summary = report.summary("round_robin")
    assert summary is not None and summary.requests == 60 and summary.p999_ms == 10.0 and summary.success_rate == 1
    assert summarize(early + late, ids, warmup_s=5.0, curve_window=report.window) == summary
    only_warmup = Report(s, (StrategyRun("round_robin", early, ids),))
    assert only_warmup.summary("round_robin") is None
    assert "| round_robin | 0 | –" in render_markdown(only_warmup)


def test_comparison_shows_sim_p99_and_the_difference() -> None:
    base = two_runs()
    sim = {
        name: summarize(run.records, run.server_ids)
        for name, run in zip(("round_robin", "least_connections"), base.runs, strict=True)
    }
    halved = {name: dataclasses.replace(s, p99_ms=s.p99_ms / 2) for name, s in sim.items()}
    report = Report(base.spec, base.runs, kind="evaluate", comparison=halved)

    markdown = render_markdown(report)

    rows = table_rows(markdown)
    assert rows[0][len(COLUMNS) : len(COLUMNS) + 2] == ["sim p99 ms", "p99 real vs sim"]
    assert rows[2][len(COLUMNS) + 1] == "+100%" and rows[3][len(COLUMNS) + 1] == "+100%"
    assert "Simulator vs real: p99 differs by 100% on average" in markdown
    assert "best by p99: real **least_connections**, simulator **least_connections** (agree)" in markdown


def test_json_and_csv_round_trip(tmp_path: Path) -> None:
    report = two_runs()

    paths = write_report(report, tmp_path / "out")

    assert [p.name for p in paths] == ["report.md", "report.json", "summary.csv", "requests.csv"]
    assert paths[0].read_text() == render_markdown(report)
    data = json.loads(paths[1].read_text())
    assert data["kind"] == "simulate" and data["scenario"]["name"] == "unit" and data["best_p99"] == "least_connections"
    assert [run["strategy"] for run in data["runs"]] == ["round_robin", "least_connections"]
    for run in data["runs"]:
        summary = report.summary(run["strategy"])
        assert summary is not None and run["summary"] == summary.as_dict()
        assert len(run["summary"]["learning_curve"]) == len(summary.learning_curve) > 0
        series = run["time_series"]
        assert len(series["t_s"]) == len(series["mean_latency_ms"]) == len(series["throughput_per_s"]) > 0
    assert data["runs"][0]["counters"] == {"timed_out": 2}
    assert data["runs"][1]["strategy_stats"] == {"epsilon": 0.1}

    with paths[2].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["round_robin", "least_connections"]
    for row in rows:
        summary = report.summary(row["strategy"])
        assert summary is not None
        assert float(row["p99_ms"]) == pytest.approx(summary.p99_ms, abs=1e-3)
        assert float(row["success_rate"]) == pytest.approx(summary.success_rate, abs=1e-6)
        assert float(row["cv"]) == pytest.approx(summary.cv, abs=1e-6)
        assert float(row["std_ms"]) == pytest.approx(summary.std_ms, abs=1e-3)
        assert int(row["requests"]) == summary.requests
    assert rows[0]["timed_out"] == "2" and rows[1]["timed_out"] == "0"

    with paths[3].open() as f:
        back = list(csv.DictReader(f))
    assert len(back) == 200
    assert len({r["request_id"] for r in back}) == 200
    assert [r["request_id"] for r in back][:2] == ["1-1", "1-2"]
    for run in report.runs:
        mine = [
            RequestRecord(
                float(r["timestamp_s"]), r["server"], float(r["latency_ms"]), r["success"] == "1", r["explored"] == "1"
            )
            for r in back
            if r["strategy"] == run.strategy
        ]
        assert mine == list(run.records)


def test_kind_and_duplicate_strategies_are_checked() -> None:
    report = two_runs()
    with pytest.raises(ValueError, match=r"^kind: "):
        Report(report.spec, report.runs, kind="other")
    with pytest.raises(ValueError, match=r"^runs: "):
        Report(report.spec, (report.runs[0], report.runs[0]))


def test_request_log_reads_back_what_was_stored() -> None:
    rs = records([("a", 1.5, True), ("", 0.0, False), ("b", 2.5, False)])

    log = RequestLog.from_records(rs, ["b"])

    assert list(log) == rs and log == rs and len(log) == 3
    assert log[1] == rs[1] and log[-1] == rs[-1] and log[0:2] == rs[0:2]
    assert log.server_ids == ("b", "a")
    with pytest.raises(IndexError):
        log[3]


def test_time_series_buckets_arrivals_and_completions() -> None:
    from loadwarden.backend_sim._report import time_series
    from loadwarden.backend_sim._summary import columns

    # 40 requests, one every 0.25 s over 10 s; the first half 10 ms, the second half 30 ms and failing.
    rs = [RequestRecord(i * 0.25, "a", 10.0 if i < 20 else 30.0, i < 20, False) for i in range(40)]
    rs.append(RequestRecord(5.0, "", 0.0, False, False))  # reached no server: counts in success only

    series = time_series(columns(rs, ["a"]), buckets=10)

    width = series["bucket_s"][0]
    assert width == pytest.approx(9.78 / 10)  # the last answer: 39 x 0.25 s + 30 ms
    assert len(series["t_s"]) == 10 and series["t_s"][1] == pytest.approx(width)
    assert series["mean_latency_ms"][0] == 10.0 and series["mean_latency_ms"][-1] == 30.0
    assert series["p99_ms"][0] == 10.0 and series["p99_ms"][-1] == 30.0
    assert series["success_rate"][0] == 1.0 and series["success_rate"][-1] == 0.0
    assert sum(v * width for v in series["throughput_per_s"]) == pytest.approx(40)  # every routed completion once


def test_the_best_strategy_must_succeed_about_as_often_as_the_most_successful_one() -> None:
    s = spec()
    ids = tuple(x.id for x in s.servers)
    # round robin: slow but always succeeds; least connections: fast, but fails 9 in 10.
    rr = records([(ids[i % 3], 100.0 + i, True) for i in range(100)])
    lc = records([(ids[i % 3], 5.0, i % 10 == 0) for i in range(100)])
    report = Report(
        s,
        (
            StrategyRun("round_robin", RequestLog.from_records(rr, ids), ids),
            StrategyRun("least_connections", RequestLog.from_records(lc, ids), ids),
        ),
    )
    assert report.best() == "round_robin"
    markdown = render_markdown(report)
    assert "Best p99: **round_robin**" in markdown
    assert "(least_connections had a lower p99, 5.0 ms, but succeeded for only 10.00 % of requests.)" in markdown


# --- decision modes -----------------------------------------------------------------


def central_and_local() -> Report:
    s = spec(decisions=["central", "local"])
    ids = tuple(x.id for x in s.servers)
    central = records([(ids[i % 3], 10.0 + i, True) for i in range(100)])  # p99 108 ms
    local = records([(ids[i % 3], 20.0 + 2 * i, i != 5) for i in range(100)])  # p99 216 ms, one failure
    return Report(
        s,
        (
            StrategyRun("round_robin", central, ids),
            StrategyRun("round_robin", local, ids, counters={"local": 100}, decisions="local"),
        ),
        comparison={"round_robin": summarize(central, ids), "round_robin (local)": summarize(central, ids)},
    )


def test_a_report_with_local_runs_names_each_runs_mode_and_compares_the_two() -> None:
    report = central_and_local()

    markdown = render_markdown(report)

    rows = table_rows(markdown)
    assert rows[0][:3] == ["strategy", "decisions", "requests"] and rows[1][:3] == ["---", "---", "---:"]
    assert [row[:2] for row in rows[2:]] == [["round_robin", "central"], ["round_robin", "local"]]
    assert rows[3][-1] == "local 100"
    shares = table_rows(markdown, "strategy | s-0")
    assert [row[0] for row in shares[2:]] == ["round_robin", "round_robin (local)"]
    [versus] = table_rows(markdown, "strategy | central p99 ms")[2:]
    assert versus == ["round_robin", "108.0", "216.0", "2.000", "100.00", "99.00", "-1.000"]
    assert "decisions central and local, 3 clients" in markdown
    assert "p99 real vs sim" in markdown and "round_robin (local)" in markdown.split("Simulator vs real")[1]


def test_a_central_only_report_reads_as_before() -> None:
    markdown = render_markdown(two_runs())

    assert "decisions" not in markdown and "Local against central" not in markdown
    assert table_rows(markdown)[0][0] == "strategy" and table_rows(markdown)[0][1] == "requests"


def test_local_runs_carry_their_mode_into_json_and_csv(tmp_path: Path) -> None:
    report = central_and_local()

    paths = write_report(report, tmp_path / "out")

    data = json.loads(paths[1].read_text())
    assert [(r["strategy"], r["decisions"], r["label"]) for r in data["runs"]] == [
        ("round_robin", "central", "round_robin"),
        ("round_robin", "local", "round_robin (local)"),
    ]
    assert data["scenario"]["decisions"] == ["central", "local"] and data["scenario"]["clients"] == 3
    [versus] = data["local_vs_central"]
    assert versus["p99_ratio"] == 2.0 and versus["success_points"] == -1.0
    with paths[2].open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["decisions"]) for r in rows] == [("round_robin", "central"), ("round_robin", "local")]
    with paths[3].open() as f:
        back = list(csv.DictReader(f))
    assert back[0].keys() >= {"strategy", "decisions"} and len(back) == 200
    assert {r["decisions"] for r in back[100:]} == {"local"}


def test_a_strategy_may_run_once_per_decision_mode() -> None:
    report = central_and_local()
    with pytest.raises(ValueError, match="once per decision mode"):
        Report(report.spec, (*report.runs, report.runs[1]))
