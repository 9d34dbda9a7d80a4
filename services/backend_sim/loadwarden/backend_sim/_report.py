"""The comparison report of ``simulate`` and ``evaluate``: Markdown, JSON and CSV.

A ``Report`` holds one ``StrategyRun`` per strategy (the requests it saw and
what the strategy said about itself) and the scenario they ran. Statistics are
computed here, the same way for simulated and real runs, over the requests
that arrived after the scenario's ``warmup_s``.

A strategy may run once per decision mode (``StrategyRun.decisions``: the
service decides, or the clients decide locally). Runs are named by their
``label``: the strategy for a central run, ``"<strategy> (local)"`` for a local
one. A report with only central runs reads as it always did; one with a local
run adds a ``decisions`` column to its tables and CSV files and a table of each
strategy's local figures against its central ones (``local_vs_central``).

A run of ``evaluate`` with ``[[evaluate.faults]]`` lists its outages in
``extra["outages"]`` (when the service was killed and back, and the decisions
made meanwhile by source); ``outages`` adds what the requests arriving in each
saw, and the report an "Outages" table.

A provisioning scenario's runs are its provisioning modes (``fixed``, ``reactive``,
``predictive``), each with ``extra["provisioning"]`` (``ProvisioningFigures.as_dict()``);
the report adds a "Provisioning" table and judges predictive against reactive by the
issue's bar (less time under-provisioned at no more than ``PREDICTIVE_COST_MARGIN`` more
server-hours) instead of naming the best p99.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._config import DECISION_MODES
from ._scenario_file import ScenarioSpec, TraceTraffic
from ._summary import Columns, LoadRecord, RequestRecord, Summary, columns, summarize_columns

KINDS = ("simulate", "evaluate")
# Servers up to this many get a column each in the share table; more get min/median/max.
SHARE_COLUMNS_MAX = 12
TIME_SERIES_BUCKETS = 100
REPORT_FILES = ("report.md", "report.json", "summary.csv", "requests.csv")
# Issue 21's bar: predictive provisioning under-provisions less than reactive at no more
# than this much more server-hours.
PREDICTIVE_COST_MARGIN = 0.10


def label(strategy: str, decisions: str = "central") -> str:
    """The name of ``strategy``'s run in mode ``decisions``: ``"p2c"``, ``"p2c (local)"``."""
    return strategy if decisions == "central" else f"{strategy} ({decisions})"


@dataclass(frozen=True)
class StrategyRun:
    """What one strategy's run produced.

    Attributes:
        strategy: The strategy (limit algorithm, batch controller) name.
        records: Every request, in arrival order (a ``RequestLog`` is cheapest).
        server_ids: Every backend of the run, in scenario order.
        loads: Load reports sent during the run (may be empty).
        strategy_stats: The strategy's ``stats()`` at the end (epsilon, ...).
        counters: Event counts worth reporting, e.g. ``dropped`` (arrivals over
            ``max_in_flight``), ``rejected`` (slots refused), ``timed_out``,
            ``unavailable`` (no eligible server), ``expired`` (outcomes the
            core no longer expected). Zero counts may be omitted.
        wall_s: Wall-clock seconds the run took, or None.
        extra: Any further JSON-ready data for ``report.json`` (e.g. batch
            sizes over time); not shown in the Markdown table.
        decisions: Where the run's decisions were made: ``"central"`` (the
            service) or ``"local"`` (the clients, from pushed tables).
    """

    strategy: str
    records: Sequence[RequestRecord]
    server_ids: tuple[str, ...]
    loads: Sequence[LoadRecord] = ()
    strategy_stats: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    wall_s: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    decisions: str = "central"

    def __post_init__(self) -> None:
        if self.decisions not in DECISION_MODES:
            raise ValueError(f"decisions: must be one of {', '.join(DECISION_MODES)}, got {self.decisions!r}")

    @property
    def label(self) -> str:
        """The run's name in the report: the strategy, with ``" (local)"`` when decided locally."""
        return label(self.strategy, self.decisions)


@dataclass(frozen=True)
class Report:
    """A comparison of strategies on one scenario.

    Attributes:
        spec: The scenario (with the command's section applied).
        runs: One per strategy and decision mode, in the order they ran.
        kind: ``"simulate"`` or ``"evaluate"``.
        comparison: For ``evaluate``: the simulator's summary per run label on
            the same scenario, shown as "sim p99" with the relative difference.
        meta: Anything worth recording about how the report was made (wall
            time, machine, command line); JSON-ready.
        curve_window: Requests per learning-curve point; None picks one from
            the run sizes (about 100 points for the largest run, 10-1000).
    """

    spec: ScenarioSpec
    runs: tuple[StrategyRun, ...]
    kind: str = "simulate"
    comparison: Mapping[str, Summary] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    curve_window: int | None = None
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {', '.join(KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "runs", tuple(self.runs))
        names = [run.label for run in self.runs]
        if len(set(names)) != len(names):
            raise ValueError(f"runs: each strategy may appear once per decision mode, got {names}")

    @property
    def decision_modes(self) -> tuple[str, ...]:
        """The decision modes of the runs, in order of appearance."""
        return tuple(dict.fromkeys(run.decisions for run in self.runs))

    @property
    def shows_decisions(self) -> bool:
        """Whether the tables name each run's decision mode (some run decided locally)."""
        return self.decision_modes not in ((), ("central",))

    @property
    def window(self) -> int:
        """Requests per learning-curve point."""
        if self.curve_window is not None:
            return self.curve_window
        largest = max((len(run.records) for run in self.runs), default=0)
        return max(10, min(1000, largest // 100))

    def columns(self, run: StrategyRun) -> Columns:
        """The run's requests after the warm-up, as columns."""
        key = f"columns:{run.label}"
        if key not in self._cache:
            cols = columns(run.records, run.server_ids)
            if self.spec.warmup_s > 0 and len(cols):
                cols = cols.select(cols.time_s >= self.spec.warmup_s)
            self._cache[key] = cols
        return self._cache[key]

    def summary(self, name: str) -> Summary | None:
        """Statistics of the requests of run ``name`` (a label) after the warm-up; None when there are none."""
        key = f"summary:{name}"
        if key not in self._cache:
            run = self.run(name)
            cols = self.columns(run)
            self._cache[key] = summarize_columns(cols, self.window) if len(cols) else None
        return self._cache[key]

    def summaries(self) -> dict[str, Summary | None]:
        """``summary`` of every run, by label, in run order."""
        return {run.label: self.summary(run.label) for run in self.runs}

    def run(self, name: str) -> StrategyRun:
        """The run labelled ``name`` (``StrategyRun.label``); KeyError when there is none."""
        for run in self.runs:
            if run.label == name:
                return run
        raise KeyError(name)

    def best(self) -> str | None:
        """The best strategy by p99 among those that succeed about as often as the best; see ``best_of``."""
        return best_of(self.summaries())

    def time_series(self, name: str, buckets: int = TIME_SERIES_BUCKETS) -> dict[str, list[float]]:
        """Per time bucket of the whole run labelled ``name`` (warm-up included): see ``time_series``."""
        key = f"series:{name}:{buckets}"
        if key not in self._cache:
            run = self.run(name)
            self._cache[key] = time_series(columns(run.records, run.server_ids), buckets)
        return self._cache[key]


def time_series(cols: Columns, buckets: int = TIME_SERIES_BUCKETS) -> dict[str, list[float]]:
    """Requests bucketed by time, for the over-time plots and ``report.json``.

    Returns:
        ``t_s`` (bucket starts), ``bucket_s`` (one value: the width),
        ``mean_latency_ms`` and ``p99_ms`` of the routed requests arriving in
        the bucket (NaN when none), ``throughput_per_s`` (routed requests
        completing in the bucket, per second) and ``success_rate`` (of the
        requests arriving in the bucket; NaN when none).
    """
    if not len(cols):
        return {
            "t_s": [],
            "bucket_s": [0.0],
            "mean_latency_ms": [],
            "p99_ms": [],
            "throughput_per_s": [],
            "success_rate": [],
        }
    routed = cols.server >= 0
    done_s = cols.time_s + cols.latency_ms / 1000.0
    end = float(max(cols.time_s.max(), done_s[routed].max() if routed.any() else 0.0))
    width = max(end / buckets, 1e-3)
    n = max(1, math.ceil(end / width))
    arrival = np.minimum((cols.time_s / width).astype(np.int64), n - 1)
    completion = np.minimum((done_s[routed] / width).astype(np.int64), n - 1)
    arrived = np.bincount(arrival, minlength=n)
    ok = np.bincount(arrival, weights=cols.success.astype(np.float64), minlength=n)
    lat_n = np.bincount(arrival[routed], minlength=n)
    lat_sum = np.bincount(arrival[routed], weights=cols.latency_ms[routed], minlength=n)
    p99 = [math.nan] * n
    order = np.argsort(arrival[routed], kind="stable")
    sorted_buckets = arrival[routed][order]
    sorted_lat = cols.latency_ms[routed][order]
    bounds = np.searchsorted(sorted_buckets, np.arange(n + 1))
    for b in range(n):
        chunk = sorted_lat[bounds[b] : bounds[b + 1]]
        if chunk.size:
            p99[b] = float(np.sort(chunk)[max(1, math.ceil(0.99 * chunk.size)) - 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(lat_n > 0, lat_sum / np.maximum(lat_n, 1), np.nan)
        success = np.where(arrived > 0, ok / np.maximum(arrived, 1), np.nan)
    return {
        "t_s": [round(b * width, 6) for b in range(n)],
        "bucket_s": [width],
        "mean_latency_ms": [float(v) for v in mean],
        "p99_ms": p99,
        "throughput_per_s": [float(v) / width for v in np.bincount(completion, minlength=n)],
        "success_rate": [float(v) for v in success],
    }


# --- Markdown -------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _pct(value: float) -> str:
    return f"{value * 100:.2f}" if value < 0.9995 or value == 1 else f"{value * 100:.3f}"


def relative_difference(real: float, sim: float) -> float:
    """``(real - sim) / sim``; NaN when either is not finite or ``sim`` is 0."""
    if not (math.isfinite(real) and math.isfinite(sim)) or sim == 0:
        return math.nan
    return (real - sim) / sim


def _describe(spec: ScenarioSpec) -> list[str]:
    t = spec.traffic
    speeds = sorted({s.speed for s in spec.servers})
    if spec.provisioning is not None:
        template = spec.servers[0]
        parts = [
            f"servers copied from {template.id!r} ({template.workers} workers, {template.base_ms:g} ms mean "
            f"{template.service} service: {template.capacity_per_s:,.1f} req/s each), routed by {spec.strategies[0]}"
        ]
    else:
        parts = [
            f"{len(spec.servers)} backends (speeds {', '.join(f'{v:g}' for v in speeds[:8])}"
            f"{', ...' if len(speeds) > 8 else ''}; capacity {spec.capacity_per_s:,.0f} req/s)"
        ]
    if isinstance(t, TraceTraffic):
        assert t.trace is not None and t.duration_s is not None
        parts.append(
            f"Poisson arrivals at the rate of {t.trace_path} ({t.interpolation}) x {t.rate_scale:g}, "
            f"{t.played_s / 86_400:.3g} trace days played {t.time_scale:g}x faster (mean {t.rate_per_s:,.1f}/s), "
            f"at most {t.max_in_flight} in flight"
        )
    elif t.kind == "open":
        assert t.rate_per_s is not None
        rate = f"Poisson arrivals at {t.rate_per_s:,.1f}/s"
        if t.load is not None:
            rate += f" ({t.load:.0%} of capacity)"
        if t.rate_end_per_s is not None:
            rate += f" ramping to {t.rate_end_per_s:,.1f}/s"
        if t.surges is not None:
            u = t.surges
            share = f" ({u.rate_per_s / spec.capacity_per_s:.0%} of capacity)" if t.load is not None else ""
            rate += (
                f", surging to {u.rate_per_s:,.1f}/s{share} for {u.duration_s:g} s every {u.every_s:g} s "
                f"from {u.start_s:g} s"
            )
        parts.append(rate + f", at most {t.max_in_flight} in flight")
    else:
        parts.append(f"{t.users} closed-loop users, think {t.think_ms:g} ms")
    stop = []
    if t.requests is not None:
        stop.append(f"{t.requests:,} requests")
    if t.duration_s is not None:
        stop.append(f"{t.duration_s:g} s")
    per = " per strategy" if spec.decisions == ("central",) and spec.provisioning is None else " per run"
    parts.append(" or ".join(stop) + per)
    if spec.clients is not None:
        parts.append(f"decisions {' and '.join(spec.decisions)}, {spec.clients} client{'s' * (spec.clients != 1)}")
    if spec.timeout_ms is not None:
        parts.append(f"timeout {spec.timeout_ms:g} ms")
    if spec.provisioning is not None:
        start, end = spec.evaluation_window
        parts.append(
            f"figures over trace days {start / 86_400:.3g}-{end / 86_400:.3g} (simulated {spec.warmup_s:g} s on)"
        )
    else:
        parts.append(f"first {spec.warmup_s:g} s left out" if spec.warmup_s else "no warm-up")
    parts.append(f"seed {spec.seed}")
    return ([spec.description.strip()] if spec.description.strip() else []) + ["; ".join(parts) + "."]


def _counter_note(run: StrategyRun) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value:,}" for name, value in sorted(run.counters.items()) if value)


def render_markdown(report: Report) -> str:
    """The report as Markdown: a scenario line, the table, the share table and the verdict.

    One row per run with mean, p50, p95, p99, p99.9 (ms), throughput (/s),
    success rate, CV of per-server request counts, and (``evaluate`` with a
    comparison) the simulator's p99 and the relative difference; a
    ``decisions`` column when some run decided locally. Shares per server go in
    a second table for up to ``SHARE_COLUMNS_MAX`` servers, as min/median/max
    columns beyond; then, with local runs, ``local_vs_central_markdown``.
    """
    spec = report.spec
    summaries = report.summaries()
    ids = report.runs[0].server_ids if report.runs else tuple(s.id for s in spec.servers)
    wide = len(ids) > SHARE_COLUMNS_MAX
    how = "discrete-event simulation, virtual time" if report.kind == "simulate" else "real processes"
    lines = [f"## {spec.name}: {report.kind} ({how}; mode {spec.mode})", "", *_describe(spec), ""]
    decided = report.shows_decisions
    head = [
        "strategy",
        *(["decisions"] if decided else []),
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
    if wide:
        head += ["share min %", "share median %", "share max %"]
    if report.comparison is not None:
        head += ["sim p99 ms", "p99 real vs sim"]
    notes = any(_counter_note(run) for run in report.runs)
    if notes:
        head.append("notes")
    lines.append("| " + " | ".join(head) + " |")
    text_columns = {"strategy", "decisions", "notes"}
    lines.append("| " + " | ".join("---" if name in text_columns else "---:" for name in head) + " |")
    lead = len(head) - 1 - notes  # cells after the name
    for run in report.runs:
        s = summaries[run.label]
        name = [run.strategy, run.decisions] if decided else [run.strategy]
        if s is None:
            cells = [*name, "0"] + ["–"] * (lead - len(name))
        else:
            cells = [
                *name,
                f"{s.requests:,}",
                _ms(s.mean_ms),
                _ms(s.std_ms),
                _ms(s.p50_ms),
                _ms(s.p95_ms),
                _ms(s.p99_ms),
                _ms(s.p999_ms),
                f"{s.throughput_per_s:,.1f}" if math.isfinite(s.throughput_per_s) else "–",
                _pct(s.success_rate),
                f"{s.cv:.3f}",
            ]
            if wide:
                shares = sorted(s.share.values())
                cells += [f"{shares[0] * 100:.3f}", f"{statistics.median(shares) * 100:.3f}", f"{shares[-1] * 100:.3f}"]
            if report.comparison is not None:
                sim = report.comparison.get(run.label)
                if sim is None:
                    cells += ["–", "–"]
                else:
                    diff = relative_difference(s.p99_ms, sim.p99_ms)
                    cells += [_ms(sim.p99_ms), f"{diff:+.0%}" if math.isfinite(diff) else "–"]
        if notes:
            cells.append(_counter_note(run))
        lines.append("| " + " | ".join(cells) + " |")
    if not wide and report.runs:
        lines += ["", "Share of routed requests per server (%):", ""]
        lines.append("| strategy | " + " | ".join(ids) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in ids) + " |")
        for run in report.runs:
            s = summaries[run.label]
            cells = [f"{s.share.get(sid, 0.0) * 100:.1f}" if s else "–" for sid in ids]
            lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    if local_vs_central(report):
        lines += ["", local_vs_central_markdown(report).rstrip("\n")]
    if outages(report):
        lines += ["", outages_markdown(report).rstrip("\n")]
    if provisioning_runs(report):
        lines += ["", provisioning_markdown(report).rstrip("\n"), "", provisioning_verdict(report)]
        return "\n".join(lines) + "\n"
    lines += ["", verdict(report)]
    if report.comparison is not None:
        lines.append(comparison_line(report))
    return "\n".join(lines) + "\n"


def provisioning_runs(report: Report) -> list[StrategyRun]:
    """The runs with provisioning figures, in run order."""
    return [run for run in report.runs if run.extra.get("provisioning")]


def _hours(value: float) -> str:
    return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"


def provisioning_markdown(report: Report) -> str:
    """The "Provisioning" table: per mode, the cost (server-hours), the time under-provisioned
    and over capacity, the scaling it took, and the requests' p99 and success, over the window."""
    runs = provisioning_runs(report)
    base = next((run for run in runs if run.strategy == "reactive"), None)
    base_hours = base.extra["provisioning"]["server_hours"] if base is not None else None
    first = runs[0].extra["provisioning"]
    days = (first["window_end_s"] - first["window_start_s"]) / 86_400
    lines = [
        f"Provisioning over the last {days:.3g} trace days (under-provisioned: ready servers x capacity x target "
        "below the offered rate; beyond tolerance: below it by more than the tolerance; over capacity: ready "
        "servers x capacity below it):",
        "",
        "| mode | server-hours | vs reactive | under-provisioned h | % of time | beyond tolerance h | over capacity h "
        "| mean servers | peak | scale-ups | scale-downs | p99 ms | success % | forecasts |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        f = run.extra["provisioning"]
        s = report.summary(run.label)
        versus = (
            f"{f['server_hours'] / base_hours - 1:+.1%}" if base_hours and run is not base and base_hours > 0 else "–"
        )
        models = ", ".join(f"{name} {count}" for name, count in f["models"].items())
        forecasts = f"{f['forecasts']} ({models})" if f["forecasts"] else "–"
        lines.append(
            f"| {run.label} | {f['server_hours']:,.0f} | {versus} | {_hours(f['under_hours'])} | "
            f"{f['under_share'] * 100:.2f} | {_hours(f['beyond_tolerance_hours'])} | "
            f"{_hours(f['over_capacity_hours'])} | {f['mean_servers']:.2f} | {f['peak_servers']} | "
            f"{f['scale_ups']:,} | {f['scale_downs']:,} | {_ms(s.p99_ms) if s else '–'} | "
            f"{_pct(s.success_rate) if s else '–'} | {forecasts} |"
        )
    return "\n".join(lines) + "\n"


def provisioning_comparison(report: Report) -> dict[str, Any] | None:
    """Predictive against reactive: the changes in under-provisioned time and in server-hours,
    and whether they meet the bar (less under-provisioned time at no more than
    ``PREDICTIVE_COST_MARGIN`` more server-hours); None without both modes."""
    figures = {run.strategy: run.extra["provisioning"] for run in provisioning_runs(report)}
    if "reactive" not in figures or "predictive" not in figures:
        return None
    reactive, predictive = figures["reactive"], figures["predictive"]
    cost = predictive["server_hours"] / reactive["server_hours"] - 1 if reactive["server_hours"] > 0 else math.nan
    under = predictive["under_hours"] - reactive["under_hours"]
    return {
        "under_hours_reactive": reactive["under_hours"],
        "under_hours_predictive": predictive["under_hours"],
        "under_hours_change": under,
        "under_change": under / reactive["under_hours"] if reactive["under_hours"] > 0 else math.nan,
        "server_hours_reactive": reactive["server_hours"],
        "server_hours_predictive": predictive["server_hours"],
        "server_hours_change": cost,
        "cost_margin": PREDICTIVE_COST_MARGIN,
        "meets_bar": bool(under < 0 and cost <= PREDICTIVE_COST_MARGIN),
    }


def provisioning_verdict(report: Report) -> str:
    """One line: predictive against reactive, by the issue's bar."""
    c = provisioning_comparison(report)
    if c is None:
        return "Predictive and reactive did not both run: no comparison."
    change = f" ({c['under_change']:+.0%})" if math.isfinite(c["under_change"]) else ""
    met = "meets" if c["meets_bar"] else "does not meet"
    return (
        f"Predictive against reactive: under-provisioned {_hours(c['under_hours_predictive'])} h against "
        f"{_hours(c['under_hours_reactive'])} h{change}, at {c['server_hours_change']:+.1%} server-hours "
        f"({c['server_hours_predictive']:,.0f} against {c['server_hours_reactive']:,.0f}): {met} the bar of less "
        f"under-provisioned time at no more than {PREDICTIVE_COST_MARGIN:.0%} more server-hours."
    )


@dataclass(frozen=True, slots=True)
class ModeComparison:
    """One strategy decided locally against the same strategy decided centrally.

    Attributes:
        strategy: The strategy.
        central_p99_ms: p99 latency of the central run, ms.
        local_p99_ms: p99 latency of the local run, ms.
        p99_ratio: ``local_p99_ms / central_p99_ms`` (NaN when either is missing or 0).
        central_success: Success rate of the central run, 0-1.
        local_success: Success rate of the local run, 0-1.
        success_points: ``(local_success - central_success) * 100``, percentage points.
    """

    strategy: str
    central_p99_ms: float
    local_p99_ms: float
    p99_ratio: float
    central_success: float
    local_success: float
    success_points: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "central_p99_ms": round(self.central_p99_ms, 3),
            "local_p99_ms": round(self.local_p99_ms, 3),
            "p99_ratio": round(self.p99_ratio, 4),
            "central_success": round(self.central_success, 6),
            "local_success": round(self.local_success, 6),
            "success_points": round(self.success_points, 4),
        }


def local_vs_central(report: Report) -> list[ModeComparison]:
    """Every strategy that ran both centrally and locally, in run order."""
    out = []
    for run in report.runs:
        if run.decisions != "local" or not any(r.label == run.strategy for r in report.runs):
            continue
        central, local = report.summary(run.strategy), report.summary(run.label)
        if central is None or local is None:
            continue
        ratio = local.p99_ms / central.p99_ms if central.p99_ms > 0 else math.nan
        out.append(
            ModeComparison(
                run.strategy,
                central.p99_ms,
                local.p99_ms,
                ratio if math.isfinite(ratio) else math.nan,
                central.success_rate,
                local.success_rate,
                (local.success_rate - central.success_rate) * 100.0,
            )
        )
    return out


def local_vs_central_markdown(report: Report) -> str:
    """The table of ``local_vs_central``: p99 of both modes and their ratio, success rates and their difference."""
    rows = local_vs_central(report)
    if not rows:
        return ""
    lines = [
        "Local against central decisions:",
        "",
        "| strategy | central p99 ms | local p99 ms | p99 local / central | central success % "
        "| local success % | success local − central (points) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in rows:
        ratio = f"{m.p99_ratio:.3f}" if math.isfinite(m.p99_ratio) else "–"
        lines.append(
            f"| {m.strategy} | {_ms(m.central_p99_ms)} | {_ms(m.local_p99_ms)} | {ratio} | "
            f"{_pct(m.central_success)} | {_pct(m.local_success)} | {m.success_points:+.3f} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class OutageFigures:
    """What the requests of one run saw while a fault had the Decision service down.

    Attributes:
        label: The run.
        fault: The fault's place in ``[[evaluate.faults]]``.
        killed_s: When the service was killed, s from the start of the traffic.
        until_s: When it listened again (or the run's end, ``back`` False), s.
        back: Whether it was restarted and listened again within the run.
        requests: Requests arriving from ``killed_s`` to ``until_s``.
        success_rate: Of those, the share that succeeded, 0-1 (NaN when none).
        p99_ms: p99 latency of those that reached a backend, ms (NaN when none).
        decisions: Decisions asked for meanwhile, by source (``service``, ``local``,
            ``fallback``, ``refused``, ``failed``).
        back_to_service_s: From ``until_s`` to the first decision the service made, s; None when none.
    """

    label: str
    fault: int
    killed_s: float
    until_s: float
    back: bool
    requests: int
    success_rate: float
    p99_ms: float
    decisions: Mapping[str, int]
    back_to_service_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault,
            "killed_s": round(self.killed_s, 6),
            "until_s": round(self.until_s, 6),
            "back": self.back,
            "requests": self.requests,
            "success_rate": round(self.success_rate, 6),
            "p99_ms": round(self.p99_ms, 3),
            "decisions": dict(self.decisions),
            "back_to_service_s": self.back_to_service_s,
        }


def _outage_figures(run: StrategyRun, outage: Mapping[str, Any]) -> OutageFigures:
    cols = columns(run.records, run.server_ids)
    killed, until = float(outage["killed_s"]), float(outage["until_s"])
    inside = cols.select((cols.time_s >= killed) & (cols.time_s < until)) if len(cols) else cols
    routed = inside.latency_ms[inside.server >= 0] if len(inside) else np.array([])
    p99 = float(np.sort(routed)[max(1, math.ceil(0.99 * routed.size)) - 1]) if routed.size else math.nan
    return OutageFigures(
        label=run.label,
        fault=int(outage["fault"]),
        killed_s=killed,
        until_s=until,
        back=outage.get("ready_s") is not None,
        requests=len(inside),
        success_rate=float(inside.success.mean()) if len(inside) else math.nan,
        p99_ms=p99,
        decisions=dict(outage.get("decisions", {})),
        back_to_service_s=outage.get("back_to_service_s"),
    )


def outages(report: Report) -> list[OutageFigures]:
    """Every outage of every run (``extra["outages"]``), in run order."""
    return [_outage_figures(run, outage) for run in report.runs for outage in run.extra.get("outages", ())]


def outages_markdown(report: Report) -> str:
    """The "Outages" table: per run and fault, when the service was down and what the requests
    arriving then saw (success, p99) and who decided them."""
    rows = outages(report)
    if not rows:
        return ""
    client = report.meta.get("client") or {}
    on = {True: "on", False: "off"}
    sdk = ", ".join(f"{name} {on[bool(client.get(key, True))]}" for key, name in _CLIENT_PARTS)
    local = report.shows_decisions  # some run decided from pushed tables: a column for those
    sources = ("service", *(("local",) if local else ()), "fallback", "refused", "failed")
    lines = [
        f"Outages (the Decision service SIGKILLed, then started again on its address; SDK {sdk}):",
        "",
        "| strategy | down s | requests | success % | p99 ms | "
        + " | ".join(_SOURCE_HEADS[source] for source in sources)
        + " | back to service s |",
        "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in sources) + " | ---: |",
    ]
    for o in rows:
        down = f"{o.killed_s:.2f}–{o.until_s:.2f}" if o.back else f"{o.killed_s:.2f}–end (not restarted)"
        success = _pct(o.success_rate) if math.isfinite(o.success_rate) else "–"
        back = f"{o.back_to_service_s:.2f}" if o.back_to_service_s is not None else "–"
        counts = " | ".join(f"{o.decisions.get(source, 0):,}" for source in sources)
        lines.append(f"| {o.label} | {down} | {o.requests:,} | {success} | {_ms(o.p99_ms)} | {counts} | {back} |")
    return "\n".join(lines) + "\n"


# The Outages table's decision columns, by source (``_evaluate_client.SOURCES``).
_SOURCE_HEADS = {
    "service": "by service",
    "local": "from pushed table",
    "fallback": "by SDK fallback",
    "refused": "fallback refused",
    "failed": "no answer",
}


_CLIENT_PARTS = (("breaker", "breaker"), ("retry", "retries"), ("fallback", "fallback"))


# A strategy counts as "best" only if its success rate is within this of the highest:
# failing requests fast (a collapsed admission limit rejects nearly everything, and
# its few admitted requests are quick) must not win on latency.
SUCCESS_MARGIN = 0.01


def best_of(summaries: Mapping[str, Summary | None]) -> str | None:
    """Lowest p99 (ties: lowest mean) among the strategies whose success rate is within
    ``SUCCESS_MARGIN`` of the highest; None without any summary."""
    finite = {name: s for name, s in summaries.items() if s is not None and math.isfinite(s.p99_ms)}
    if not finite:
        return None
    top = max(s.success_rate for s in finite.values())
    ranked = [(s.p99_ms, s.mean_ms, name) for name, s in finite.items() if s.success_rate >= top - SUCCESS_MARGIN]
    return min(ranked)[2]


def verdict(report: Report) -> str:
    """One line naming the best strategy (``best_of``) and how it compares with round robin."""
    best = report.best()
    if best is None:
        return "No strategy completed a request after the warm-up."
    s = report.summary(best)
    assert s is not None
    text = f"Best p99: **{best}**, {_ms(s.p99_ms)} ms (success {_pct(s.success_rate)} %)"
    baseline = report.summary("round_robin") if any(r.label == "round_robin" for r in report.runs) else None
    if best == "round_robin":
        text += "; round robin was not beaten on p99."
    elif baseline is not None and math.isfinite(baseline.p99_ms) and s.p99_ms > 0:
        ratio = baseline.p99_ms / s.p99_ms
        text += (
            f"; round robin {_ms(baseline.p99_ms)} ms (success {_pct(baseline.success_rate)} %), {ratio:.2f}× the best."
        )
    else:
        text += "."
    faster = [
        (o.p99_ms, name, o)
        for name, o in report.summaries().items()
        if o is not None and o.p99_ms < s.p99_ms and name != best
    ]
    if faster:
        p99, name, other = min(faster)
        text += (
            f" ({name} had a lower p99, {_ms(p99)} ms, but succeeded for only "
            f"{_pct(other.success_rate)} % of requests.)"
        )
    return text


def comparison_line(report: Report) -> str:
    """How the real p99 figures differ from the simulator's, and whether both pick the same best."""
    assert report.comparison is not None
    diffs = []
    for run in report.runs:
        s, sim = report.summary(run.label), report.comparison.get(run.label)
        if s is not None and sim is not None:
            d = relative_difference(s.p99_ms, sim.p99_ms)
            if math.isfinite(d):
                diffs.append((abs(d), d, run.label))
    if not diffs:
        return "No simulator figures to compare with."
    sim_best = best_of({k: v for k, v in report.comparison.items() if any(r.label == k for r in report.runs)})
    worst = max(diffs)
    mean_abs = sum(d[0] for d in diffs) / len(diffs)
    agree = "agree" if sim_best == report.best() else "disagree"
    return (
        f"Simulator vs real: p99 differs by {mean_abs:.0%} on average (at most {worst[1]:+.0%}, "
        f"{worst[2]}); best by p99: real **{report.best()}**, simulator **{sim_best}** ({agree})."
    )


# --- files ----------------------------------------------------------------------


def _spec_dict(spec: ScenarioSpec) -> dict[str, Any]:
    t = spec.traffic
    return {
        "name": spec.name,
        "description": spec.description,
        "source": spec.source,
        "section": spec.section,
        "seed": spec.seed,
        "mode": spec.mode,
        "strategies": list(spec.strategies),
        "decisions": list(spec.decisions),
        "clients": spec.clients,
        "route_push_interval_ms": spec.route_push_interval_ms,
        "params": {k: dict(v) for k, v in spec.params.items()},
        "warmup_s": spec.warmup_s,
        "timeout_ms": spec.timeout_ms,
        "load_report_interval_ms": spec.load_report_interval_ms,
        "capacity_per_s": spec.capacity_per_s,
        "traffic": {
            "kind": t.kind,
            "rate_per_s": t.rate_per_s,
            "rate_end_per_s": t.rate_end_per_s,
            "duration_s": t.duration_s,
            "requests": t.requests,
            "max_in_flight": t.max_in_flight,
            "users": t.users,
            "think_ms": t.think_ms,
            "load": t.load,
            "load_end": t.load_end,
            **(
                {
                    "trace": t.trace_path,
                    "time_scale": t.time_scale,
                    "rate_scale": t.rate_scale,
                    "interpolation": t.interpolation,
                }
                if isinstance(t, TraceTraffic)
                else {}
            ),
            **({"surges": dataclasses.asdict(t.surges)} if t.surges is not None else {}),
        },
        "provisioning": dataclasses.asdict(spec.provisioning) if spec.provisioning is not None else None,
        **({"variants": {name: v.as_dict() for name, v in spec.variants.items()}} if spec.variants else {}),
        "servers": len(spec.servers),
        "backends": [
            {
                "id": s.id,
                "speed": s.speed,
                "workers": s.workers,
                "base_ms": s.base_ms,
                "service": s.service,
                "failure_rate": s.failure_probability,
                "weight": s.weight,
                "schedule": [
                    {
                        "start_s": p.start_s,
                        "duration_s": p.duration_s,
                        "service_ms": p.service_ms,
                        "slowdown": p.slowdown,
                        "outage": p.outage,
                    }
                    for p in s.schedule
                ],
            }
            for s in spec.servers[: SHARE_COLUMNS_MAX * 10]
        ],
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: they become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _load_series(loads: Sequence[LoadRecord]) -> dict[str, list[float]]:
    """Mean CPU % and active requests over the servers, per report time."""
    by_time: dict[float, list[LoadRecord]] = {}
    for record in loads:
        by_time.setdefault(record.time_s, []).append(record)
    times = sorted(by_time)
    return {
        "t_s": times,
        "mean_cpu_percent": [sum(r.cpu_percent for r in by_time[t]) / len(by_time[t]) for t in times],
        "mean_active_requests": [sum(r.active_requests for r in by_time[t]) / len(by_time[t]) for t in times],
    }


def report_dict(report: Report) -> dict[str, Any]:
    """Everything ``report.json`` holds: the table's figures, learning curves and time series."""
    runs = []
    for run in report.runs:
        s = report.summary(run.label)
        entry: dict[str, Any] = {
            "strategy": run.strategy,
            "decisions": run.decisions,
            "label": run.label,
            "summary": s.as_dict() if s else None,
            "records": len(run.records),
            "counters": dict(run.counters),
            "strategy_stats": dict(run.strategy_stats),
            "wall_s": run.wall_s,
            "time_series": report.time_series(run.label),
            "load_series": _load_series(run.loads),
            "extra": dict(run.extra),
        }
        if run.extra.get("outages"):
            entry["outages"] = [_outage_figures(run, outage).as_dict() for outage in run.extra["outages"]]
        if report.comparison is not None and run.label in report.comparison and s is not None:
            sim = report.comparison[run.label]
            entry["sim_summary"] = sim.as_dict()
            entry["p99_real_vs_sim"] = relative_difference(s.p99_ms, sim.p99_ms)
        runs.append(entry)
    return _finite(
        {
            "kind": report.kind,
            "scenario": _spec_dict(report.spec),
            "server_ids": list(report.runs[0].server_ids) if report.runs else [],
            "curve_window": report.window,
            "runs": runs,
            "best_p99": report.best(),
            "verdict": provisioning_verdict(report) if provisioning_runs(report) else verdict(report),
            "provisioning": provisioning_comparison(report),
            "local_vs_central": [m.as_dict() for m in local_vs_central(report)],
            "comparison": comparison_line(report) if report.comparison is not None else None,
            "meta": dict(report.meta),
        }
    )


SUMMARY_COLUMNS = (
    "strategy",
    "requests",
    "mean_ms",
    "std_ms",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "p999_ms",
    "throughput_per_s",
    "success_rate",
    "cv",
    "explored_rate",
    "unrouted",
    "share_min",
    "share_median",
    "share_max",
    "sim_p99_ms",
    "p99_real_vs_sim",
)


def _csv_number(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.{digits}f}"


def write_summary_csv(report: Report, path: Path) -> None:
    """``summary.csv``: one row per run, ``SUMMARY_COLUMNS`` then one per counter name
    (with ``decisions`` after ``strategy`` when some run decided locally)."""
    counters = sorted({name for run in report.runs for name in run.counters})
    decided = report.shows_decisions
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        head = [*SUMMARY_COLUMNS, *counters]
        writer.writerow([head[0], "decisions", *head[1:]] if decided else head)
        for run in report.runs:
            s = report.summary(run.label)
            sim = report.comparison.get(run.label) if report.comparison is not None else None
            row: list[Any] = [run.strategy, run.decisions] if decided else [run.strategy]
            if s is None:
                row += [0] + [""] * (len(SUMMARY_COLUMNS) - 2)
            else:
                shares = sorted(s.share.values()) or [0.0]
                row += [
                    s.requests,
                    _csv_number(s.mean_ms, 3),
                    _csv_number(s.std_ms, 3),
                    _csv_number(s.p50_ms, 3),
                    _csv_number(s.p95_ms, 3),
                    _csv_number(s.p99_ms, 3),
                    _csv_number(s.p999_ms, 3),
                    _csv_number(s.throughput_per_s, 3),
                    _csv_number(s.success_rate, 6),
                    _csv_number(s.cv, 6),
                    _csv_number(s.explored_rate, 6),
                    s.unrouted,
                    _csv_number(shares[0], 6),
                    _csv_number(statistics.median(shares), 6),
                    _csv_number(shares[-1], 6),
                    _csv_number(sim.p99_ms, 3) if sim else "",
                    _csv_number(relative_difference(s.p99_ms, sim.p99_ms), 6) if sim else "",
                ]
            row += [run.counters.get(name, 0) for name in counters]
            writer.writerow(row)


_CSV_CHUNK = 100_000
REQUEST_COLUMNS = ("request_id", "strategy", "timestamp_s", "server", "latency_ms", "success", "explored")


def write_requests_csv(report: Report, path: Path) -> None:
    """``requests.csv``: every request of every run (warm-up included), one row each
    (with ``decisions`` after ``strategy`` when some run decided locally). A request's
    id is ``<run>-<n>``: the run's position in the report (from 1) and the request's
    in the run's arrival order (from 1), unique in the file."""
    decided = report.shows_decisions
    with path.open("w", newline="", encoding="utf-8") as out:
        names = [*REQUEST_COLUMNS[:2], "decisions", *REQUEST_COLUMNS[2:]] if decided else list(REQUEST_COLUMNS)
        out.write(",".join(names) + "\n")
        for number, run in enumerate(report.runs, 1):
            cols = columns(run.records, run.server_ids)
            ids = cols.server_ids
            name = f"{run.strategy},{run.decisions}" if decided else run.strategy
            for start in range(0, len(cols), _CSV_CHUNK):  # bounded memory for millions of rows
                part = slice(start, start + _CSV_CHUNK)
                out.writelines(
                    f"{number}-{n},{name},{t:.6f},{ids[s] if s >= 0 else ''},{lat:.3f},{int(ok)},{int(ex)}\n"
                    for n, t, s, lat, ok, ex in zip(
                        range(start + 1, start + 1 + len(cols.time_s[part])),
                        cols.time_s[part].tolist(),
                        cols.server[part].tolist(),
                        cols.latency_ms[part].tolist(),
                        cols.success[part].tolist(),
                        cols.explored[part].tolist(),
                        strict=True,
                    )
                )


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Writes ``report.md``, ``report.json``, ``summary.csv`` and ``requests.csv`` into ``out_dir``.

    The directory is created if needed; existing files of those names are replaced.

    Returns:
        The paths written, in that order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in REPORT_FILES]
    paths[0].write_text(render_markdown(report), encoding="utf-8")
    paths[1].write_text(json.dumps(report_dict(report), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    write_summary_csv(report, paths[2])
    write_requests_csv(report, paths[3])
    return paths
