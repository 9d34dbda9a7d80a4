"""The seed's evaluation outputs: statistics per strategy, the report (JSON and Markdown), CSV files and plots.

Latency statistics are over the requests that reached a backend, as the proxy
timed them (a timed-out request counts at the timeout); the success rate is over
every request (an answer of 200 is a success). ``summarize`` of
``loadwarden.backend_sim`` computes the figures ``loadwarden evaluate`` reports
(nearest-rank percentiles, the standard deviation, throughput from the first
arrival to the last answer, the coefficient of variation of the per-server
request counts); this module adds the latency's coefficient of variation (the
seed's stability figure) and the choice of the best strategy.

The best strategy is the one with the lowest p99 (ties: the lower mean) among those
whose success rate is within one percentage point of the best success rate, so a
strategy cannot win on latency by failing requests fast.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadwarden.backend_sim import RequestRecord, summarize

from .collector import HealthSample
from .proxy import ProxyRecord
from .traffic import TrafficResult

SUCCESS_MARGIN = 0.01  # "within one point": success rates are 0-1
FAILURE_REWARD = -1000.0  # the seed's reward for a failed request
LATENCY_PER_REWARD_MS = 10.0  # the seed's reward: -latency_ms / 10
CURVE_POINTS = 200  # learning-curve points kept per strategy in report.json
REQUEST_COLUMNS = ("request_id", "strategy", "server", "latency_ms", "status", "timestamp_s", "explored")
HEALTH_COLUMNS = (
    "strategy",
    "timestamp_s",
    "server",
    "cpu_percent",
    "active_requests",
    "avg_response_time_ms",
    "status",
)
PLOT_FILES = (
    "latency_over_time.png",
    "throughput.png",
    "server_distribution.png",
    "learning_curve.png",
    "latency_histogram.png",
    "summary.png",
)
LEARNING = "q_learning"


@dataclass(frozen=True)
class RunResult:
    """One strategy's run.

    Attributes:
        strategy: Routing strategy.
        pool: The loadwarden pool it ran on.
        records: The proxy's log, in arrival order.
        traffic: What the clients saw.
        health: The collector's samples during the run.
        strategy_stats: The pool's ``strategy_stats`` at the end (episodes, epsilon, ... for q_learning).
    """

    strategy: str
    pool: str
    records: Sequence[ProxyRecord]
    traffic: TrafficResult
    health: Sequence[HealthSample] = ()
    strategy_stats: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Stats:
    """A run's figures; latencies in ms over the requests that reached a backend (NaN when none did)."""

    strategy: str
    requests: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float
    latency_cv: float
    success_rate: float
    throughput_per_s: float
    server_counts: dict[str, int]
    server_cv: float
    explored_rate: float
    statuses: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        def num(value: float, digits: int = 3) -> float | None:
            return round(value, digits) if math.isfinite(value) else None

        return {
            "strategy": self.strategy,
            "requests": self.requests,
            "mean_ms": num(self.mean_ms),
            "p50_ms": num(self.p50_ms),
            "p95_ms": num(self.p95_ms),
            "p99_ms": num(self.p99_ms),
            "std_ms": num(self.std_ms),
            "latency_cv": num(self.latency_cv, 4),
            "success_rate": round(self.success_rate, 6),
            "throughput_per_s": num(self.throughput_per_s, 2),
            "server_distribution": dict(self.server_counts),
            "server_cv": num(self.server_cv, 4),
            "explored_rate": round(self.explored_rate, 4),
            "statuses": dict(self.statuses),
        }


def stats(run: RunResult, server_ids: Sequence[str]) -> Stats:
    """The figures of `run`; `server_ids` are every backend (those given nothing show 0)."""
    records = [RequestRecord(r.time_s, r.server, r.latency_ms, r.status == 200, r.explored) for r in run.records]
    if not records:
        nan = math.nan
        empty = dict.fromkeys(server_ids, 0)
        return Stats(run.strategy, 0, nan, nan, nan, nan, nan, nan, 0.0, 0.0, empty, 0.0, 0.0, {})
    summary = summarize(records, server_ids)
    counts = Counter(r.server for r in records if r.server)
    return Stats(
        strategy=run.strategy,
        requests=summary.requests,
        mean_ms=summary.mean_ms,
        p50_ms=summary.p50_ms,
        p95_ms=summary.p95_ms,
        p99_ms=summary.p99_ms,
        std_ms=summary.std_ms,
        latency_cv=summary.std_ms / summary.mean_ms if summary.mean_ms > 0 else math.nan,
        success_rate=summary.success_rate,
        throughput_per_s=summary.throughput_per_s,
        server_counts={sid: counts.get(sid, 0) for sid in server_ids},
        server_cv=summary.cv,
        explored_rate=summary.explored_rate,
        statuses=dict(sorted(Counter(str(r.status) for r in run.records).items())),
    )


def best_strategy(all_stats: Sequence[Stats]) -> str | None:
    """Lowest p99 (ties: lowest mean) among the strategies within `SUCCESS_MARGIN` of the best success rate."""
    finite = [s for s in all_stats if math.isfinite(s.p99_ms)]
    if not finite:
        return None
    top = max(s.success_rate for s in finite)
    return min((s.p99_ms, s.mean_ms, s.strategy) for s in finite if s.success_rate >= top - SUCCESS_MARGIN)[2]


def rewards(records: Sequence[ProxyRecord]) -> np.ndarray:
    """The seed's reward per request, in arrival order: -latency_ms / 10, or -1000 for a failure."""
    return np.array(
        [-r.latency_ms / LATENCY_PER_REWARD_MS if r.status == 200 else FAILURE_REWARD for r in records],
        dtype=np.float64,
    )


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values; the first ``window - 1`` points average what there is."""
    if values.size == 0:
        return values
    sums = np.cumsum(values)
    out = np.empty_like(values)
    head = min(window, values.size)
    out[:head] = sums[:head] / np.arange(1, head + 1)
    if values.size > window:
        out[window:] = (sums[window:] - sums[:-window]) / window
    return out


def curve_window(requests: int) -> int:
    """Requests per moving-average window: a twentieth of the run, 10-500."""
    return max(10, min(500, requests // 20))


def learning_curve(records: Sequence[ProxyRecord]) -> dict[str, Any]:
    """The reward's moving average (at most `CURVE_POINTS` points) and its window."""
    window = curve_window(len(records))
    curve = moving_average(rewards(records), window)
    step = max(1, math.ceil(curve.size / CURVE_POINTS))
    index = list(range(0, curve.size, step))
    if curve.size and index[-1] != curve.size - 1:
        index.append(curve.size - 1)
    return {"window": window, "request": [i + 1 for i in index], "reward": [round(float(curve[i]), 3) for i in index]}


# --- report.json and report.md --------------------------------------------------


def report_dict(runs: Sequence[RunResult], setup: Mapping[str, Any], server_ids: Sequence[str]) -> dict[str, Any]:
    all_stats = [stats(run, server_ids) for run in runs]
    best = best_strategy(all_stats)
    top = max((s.success_rate for s in all_stats), default=0.0)
    return {
        "seed": "002",
        "setup": dict(setup),
        "server_ids": list(server_ids),
        "requests": sum(s.requests for s in all_stats),
        "strategies": [
            {
                **s.as_dict(),
                "pool": run.pool,
                "sent": run.traffic.sent,
                "dropped": run.traffic.dropped,
                "client_statuses": dict(sorted(run.traffic.statuses.items())),
                "strategy_stats": dict(run.strategy_stats),
                "learning_curve": learning_curve(run.records),
            }
            for run, s in zip(runs, all_stats, strict=True)
        ],
        "best": {
            "strategy": best,
            "rule": "lowest p99 among the strategies within 1 point of the best success rate (ties: lowest mean)",
            "best_success_rate": round(top, 6),
            "eligible": [s.strategy for s in all_stats if s.success_rate >= top - SUCCESS_MARGIN],
        },
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: the setup, the table, requests per server, the best strategy, Q-learning's figures."""
    setup = report["setup"]
    rows = report["strategies"]
    backends = ", ".join(f"{b['id']} speed {b['speed']:g} ({b['workers']} workers)" for b in setup["backends"])
    lines = [
        "# Seed 002: round robin, least connections and Q-learning behind a reverse proxy",
        "",
        f"{len(setup['backends'])} aiohttp backends ({backends}; base delay {setup['base_delay_ms']:g} ms, "
        f"exponential service times; capacity {setup['capacity_per_s']:,.0f} req/s) behind an aiohttp proxy "
        f"that asks loadwarden for every request. Poisson arrivals at {setup['rate_per_s']:g} req/s for "
        f"{setup['duration_s']:g} s per strategy (the same arrivals for each), proxy timeout "
        f"{setup['timeout_ms']:g} ms, load polled from /health every {setup['poll_interval_s']:g} s, seed "
        f"{setup['seed']}.",
        "",
        "| strategy | requests | mean ms | p50 ms | p95 ms | p99 ms | std dev ms | success % | throughput /s "
        "| CV latency | CV servers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cv = "–" if r["latency_cv"] is None else f"{r['latency_cv']:.3f}"
        lines.append(
            f"| {r['strategy']} | {r['requests']:,} | {_ms(r['mean_ms'])} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} "
            f"| {_ms(r['p99_ms'])} | {_ms(r['std_ms'])} | {_pct(r['success_rate'])} "
            f"| {_ms(r['throughput_per_s'])} | {cv} | {r['server_cv'] or 0:.3f} |"
        )
    ids = report["server_ids"]
    lines += ["", "Requests per server:", "", "| strategy | " + " | ".join(ids) + " | failures |"]
    lines.append("| --- | " + " | ".join("---:" for _ in ids) + " | --- |")
    for r in rows:
        counts = " | ".join(f"{r['server_distribution'][sid]:,}" for sid in ids)
        failed = ", ".join(f"{n:,} × {code}" for code, n in r["statuses"].items() if code != "200") or "none"
        lines.append(f"| {r['strategy']} | {counts} | {failed} |")
    best = report["best"]
    lines.append("")
    if best["strategy"] is None:
        lines.append("No strategy had a request reach a backend.")
    else:
        winner = next(r for r in rows if r["strategy"] == best["strategy"])
        lines.append(
            f"Best by p99 among the strategies within 1 point of the best success rate "
            f"({_pct(best['best_success_rate'])} %: {', '.join(best['eligible'])}): **{best['strategy']}**, "
            f"p99 {_ms(winner['p99_ms'])} ms at {_pct(winner['success_rate'])} % success."
        )
    for r in rows:
        s = r["strategy_stats"]
        if r["strategy"] == LEARNING and s:
            lines.append(
                f"Q-learning at the end: {s.get('episodes', 0):,.0f} episodes (outcomes learned from), "
                f"{s.get('updates', 0):,.0f} updates, epsilon {s.get('epsilon', 0):.3f}, "
                f"{s.get('table_size', 0):,.0f} states in its table, {s.get('explored', 0):,.0f} explorations."
            )
    return "\n".join(lines) + "\n"


def write_requests_csv(runs: Sequence[RunResult], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(REQUEST_COLUMNS)
        for run in runs:
            for r in run.records:
                writer.writerow(
                    [
                        r.request_id,
                        r.strategy,
                        r.server,
                        f"{r.latency_ms:.3f}",
                        r.status,
                        f"{r.time_s:.6f}",
                        int(r.explored),
                    ]
                )


def write_health_csv(runs: Sequence[RunResult], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(HEALTH_COLUMNS)
        for run in runs:
            for h in run.health:
                writer.writerow(
                    [
                        h.strategy,
                        f"{h.time_s:.3f}",
                        h.server,
                        h.cpu_percent,
                        h.active_requests,
                        h.avg_response_time_ms,
                        h.status,
                    ]
                )


def write_report(
    runs: Sequence[RunResult], setup: Mapping[str, Any], server_ids: Sequence[str], out_dir: Path
) -> tuple[dict[str, Any], list[Path]]:
    """Writes ``report.json``, ``report.md``, ``requests.csv`` and ``server_metrics.csv``.

    Returns:
        The report (``report.json``'s content) and the paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report_dict(runs, setup, server_ids)
    paths = [out_dir / name for name in ("report.json", "report.md", "requests.csv", "server_metrics.csv")]
    paths[0].write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    paths[1].write_text(render_markdown(report), encoding="utf-8")
    write_requests_csv(runs, paths[2])
    write_health_csv(runs, paths[3])
    return report, paths


# --- plots ------------------------------------------------------------------------


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    """A figure on the Agg canvas (no pyplot: no display, no global state) and its axes grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False)


def _latency_over_time(ax: Any, runs: Sequence[RunResult]) -> None:
    for i, run in enumerate(runs):
        routed = [r for r in run.records if r.server]
        if not routed:
            continue
        latency = np.array([r.latency_ms for r in routed])
        smooth = moving_average(latency, curve_window(len(routed)))
        ax.plot([r.time_s for r in routed], smooth, label=run.strategy, color=f"C{i}", linewidth=1.2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms), moving average")
    ax.set_title("Latency over time")
    ax.grid(True, alpha=0.3)


def _throughput(ax: Any, all_stats: Sequence[Stats]) -> None:
    names = [s.strategy for s in all_stats]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [s.throughput_per_s for s in all_stats], 0.4, label="answered", color="C0")
    ax.bar(x + 0.2, [s.throughput_per_s * _routed_success(s) for s in all_stats], 0.4, label="succeeded", color="C2")
    ax.set_xticks(x, names)
    ax.set_ylabel("requests / s")
    ax.set_title("Throughput")
    ax.grid(True, axis="y", alpha=0.3)


def _routed_success(s: Stats) -> float:
    routed = sum(s.server_counts.values())
    ok = s.statuses.get("200", 0)
    return ok / routed if routed else 0.0


def _server_distribution(ax: Any, all_stats: Sequence[Stats], server_ids: Sequence[str]) -> None:
    n = max(1, len(all_stats))
    width = 0.8 / n
    x = np.arange(len(server_ids))
    for i, s in enumerate(all_stats):
        total = sum(s.server_counts.values()) or 1
        shares = [s.server_counts[sid] / total * 100 for sid in server_ids]
        ax.bar(x + (i - (n - 1) / 2) * width, shares, width, label=s.strategy, color=f"C{i}")
    ax.set_xticks(x, list(server_ids))
    ax.set_ylabel("share of requests (%)")
    ax.set_title("Requests per server")
    ax.grid(True, axis="y", alpha=0.3)


def _learning_curve(ax: Any, runs: Sequence[RunResult]) -> None:
    """Q-learning's reward moving average, solid, on its own scale; the others' dashed, for reference."""
    learned = None
    for i, run in enumerate(runs):
        if not run.records:
            continue
        curve = moving_average(rewards(run.records), curve_window(len(run.records)))
        style = "-" if run.strategy == LEARNING else "--"
        width = 1.6 if run.strategy == LEARNING else 1.0
        ax.plot(np.arange(1, curve.size + 1), curve, style, label=run.strategy, color=f"C{i}", linewidth=width)
        if run.strategy == LEARNING:
            learned = curve
    if learned is not None and learned.size:
        # A strategy that times out sits far below; the scale is the learner's, the others may leave it.
        low, high = float(learned.min()), float(learned.max())
        pad = max(1.0, (high - low) * 0.5)
        ax.set_ylim(low - pad, min(0.0, high + pad) if high <= 0 else high + pad)
    ax.set_xlabel("request")
    ax.set_ylabel("reward, moving average")
    ax.set_title("Learning curve (reward -latency ms / 10; a failure -1000)")
    ax.grid(True, alpha=0.3)


def _latency_histogram(ax: Any, runs: Sequence[RunResult]) -> None:
    values = [
        (i, run, np.array([r.latency_ms for r in run.records if r.server and r.latency_ms > 0]))
        for i, run in enumerate(runs)
    ]
    present = [v for _, _, v in values if v.size]
    if not present:
        ax.set_title("Latency histogram (no requests)")
        return
    low = max(min(float(v.min()) for v in present), 1e-3)
    high = max(float(v.max()) for v in present)
    bins = np.geomspace(low, high * 1.0001, 50) if high > low else np.array([low * 0.9, low * 1.1])
    for i, run, v in values:
        if v.size:
            weights = np.full(v.size, 100.0 / v.size)
            ax.hist(v, bins=bins, histtype="step", weights=weights, label=run.strategy, color=f"C{i}", linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of requests (%)")
    ax.set_title("Latency histogram")
    ax.grid(True, alpha=0.3)


def _percentiles(ax: Any, all_stats: Sequence[Stats]) -> None:
    x = np.arange(len(all_stats))
    for offset, (name, attr) in zip(
        (-0.27, 0.0, 0.27), (("p50", "p50_ms"), ("p95", "p95_ms"), ("p99", "p99_ms")), strict=True
    ):
        ax.bar(x + offset, [getattr(s, attr) for s in all_stats], 0.27, label=name)
    ax.set_xticks(x, [s.strategy for s in all_stats])
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency percentiles")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)


def write_plots(runs: Sequence[RunResult], server_ids: Sequence[str], out_dir: Path) -> list[Path]:
    """Writes the seed's plots (`PLOT_FILES`) into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    all_stats = [stats(run, server_ids) for run in runs]
    draws = (
        lambda ax: _latency_over_time(ax, runs),
        lambda ax: _throughput(ax, all_stats),
        lambda ax: _server_distribution(ax, all_stats, server_ids),
        lambda ax: _learning_curve(ax, runs),
        lambda ax: _latency_histogram(ax, runs),
    )
    paths = []
    for name, draw in zip(PLOT_FILES[:5], draws, strict=True):
        figure, axes = _figure(8, 4.5)
        draw(axes[0][0])
        axes[0][0].legend(fontsize="small")
        paths.append(out_dir / name)
        figure.savefig(paths[-1], format="png")
    figure, axes = _figure(13, 8, 2, 2)
    _percentiles(axes[0][0], all_stats)
    _latency_over_time(axes[0][1], runs)
    _server_distribution(axes[1][0], all_stats, server_ids)
    _learning_curve(axes[1][1], runs)
    for ax in (axes[0][1], axes[1][0], axes[1][1]):
        ax.legend(fontsize="small")
    figure.suptitle("Seed 002: comparison summary")
    paths.append(out_dir / PLOT_FILES[5])
    figure.savefig(paths[-1], format="png")
    return paths
