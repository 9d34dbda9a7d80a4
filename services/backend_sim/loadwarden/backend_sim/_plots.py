"""PNG plots of a ``Report`` (matplotlib, the ``eval`` extra; imported only when plotting).

Figures are drawn with ``matplotlib.figure.Figure`` on the Agg canvas, never
through ``pyplot``, so plotting needs no display and keeps no global state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ._report import SHARE_COLUMNS_MAX, Report, StrategyRun, provisioning_runs

PLOT_FILES = (
    "latency_over_time.png",
    "throughput_over_time.png",
    "server_distribution.png",
    "learning_curve.png",
    "latency_histogram.png",
    "summary.png",
)
# Written besides PLOT_FILES when the report has provisioning runs.
PROVISIONING_PLOT = "provisioning.png"
# Strategies that learn from outcomes; their learning curves are drawn solid, the others dashed.
LEARNING_STRATEGIES = frozenset({"q_learning", "q_linear"})
DPI = 100


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to get it."""


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable("plots skipped: install loadwarden[eval] (matplotlib is not installed)") from None
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _color(report: Report, name: str) -> str:
    """One colour per run in every plot: matplotlib's cycle by the run's order (``name`` is its label)."""
    names = [run.label for run in report.runs]
    return f"C{names.index(name) % 10}"


def _smooth(values: list[float], window: int = 3) -> np.ndarray:
    """Centered moving average over ``window`` buckets, ignoring NaN buckets."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0 or window <= 1:
        return data
    valid = np.isfinite(data)
    kernel = np.ones(window)
    sums = np.convolve(np.where(valid, data, 0.0), kernel, mode="same")
    counts = np.convolve(valid.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _log_if_wide(ax: Any, values: list[np.ndarray]) -> None:
    finite = np.concatenate([v[np.isfinite(v) & (v > 0)] for v in values]) if values else np.zeros(0)
    if finite.size and finite.max() / max(finite.min(), 1e-9) > 50:
        ax.set_yscale("log")


def _latency_over_time(ax: Any, report: Report) -> None:
    drawn = []
    for run in report.runs:
        series = report.time_series(run.label)
        smoothed = _smooth(series["mean_latency_ms"])
        drawn.append(smoothed)
        ax.plot(series["t_s"], smoothed, label=run.label, linewidth=1.2, color=_color(report, run.label))
    if report.spec.warmup_s:
        ax.axvline(report.spec.warmup_s, color="grey", linestyle=":", linewidth=1)
    _log_if_wide(ax, drawn)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean latency (ms)")
    ax.set_title("Latency over time (moving average)")
    ax.grid(True, alpha=0.3)


def _throughput_over_time(ax: Any, report: Report) -> None:
    for run in report.runs:
        series = report.time_series(run.label)
        ax.plot(
            series["t_s"],
            _smooth(series["throughput_per_s"]),
            label=run.label,
            linewidth=1.2,
            color=_color(report, run.label),
        )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("completed requests / s")
    ax.set_title("Throughput over time")
    ax.grid(True, alpha=0.3)


def _server_distribution(ax: Any, report: Report) -> None:
    summaries = report.summaries()
    ids = report.runs[0].server_ids if report.runs else ()
    if len(ids) <= SHARE_COLUMNS_MAX:
        n = max(1, len(report.runs))
        width = 0.8 / n
        x = np.arange(len(ids))
        for i, run in enumerate(report.runs):
            s = summaries[run.label]
            shares = [s.share.get(sid, 0.0) * 100 if s else 0.0 for sid in ids]
            ax.bar(x + (i - (n - 1) / 2) * width, shares, width, label=run.label, color=_color(report, run.label))
        ax.set_xticks(x, ids, rotation=45 if len(ids) > 6 else 0, ha="right" if len(ids) > 6 else "center")
        ax.set_ylabel("share of requests (%)")
    else:
        for run in report.runs:
            s = summaries[run.label]
            if s is None:
                continue
            ranked = np.sort(np.array(list(s.share.values())))[::-1] * 100
            ax.plot(
                np.arange(1, ranked.size + 1),
                ranked,
                label=run.label,
                linewidth=1.2,
                color=_color(report, run.label),
            )
        ax.set_xlabel("server rank")
        ax.set_ylabel("share of requests (%)")
    ax.set_title("Requests per server")
    ax.grid(True, axis="y", alpha=0.3)


def _learns(report: Report, run: StrategyRun) -> bool:
    s = report.summary(run.label)
    return run.label in LEARNING_STRATEGIES or (s is not None and s.explored_rate > 0)


def _learning_curve(ax: Any, report: Report) -> None:
    """Reward moving average of the learning strategies (of every strategy when none learns)."""
    window = report.window
    learners = [run for run in report.runs if _learns(report, run)] or list(report.runs)
    for run in learners:
        s = report.summary(run.label)
        if s is None or not s.learning_curve:
            continue
        x = (np.arange(len(s.learning_curve)) + 1) * window
        ax.plot(x, s.learning_curve, label=run.label, linewidth=1.4, color=_color(report, run.label))
    ax.set_xlabel("requests (after warm-up)")
    ax.set_ylabel("mean reward (-latency ms / 10)")
    ax.set_title(f"Learning curve (reward, moving average over {window} requests)")
    ax.grid(True, alpha=0.3)


def _latency_histogram(ax: Any, report: Report) -> None:
    latencies = []
    for run in report.runs:
        cols = report.columns(run)
        latencies.append((run.label, cols.latency_ms[(cols.server >= 0) & (cols.latency_ms > 0)]))
    everything = [v for _, v in latencies if v.size]
    if not everything:
        ax.set_title("Latency histogram (no requests)")
        return
    low = max(min(float(v.min()) for v in everything), 1e-3)
    high = max(float(v.max()) for v in everything)
    bins = np.geomspace(low, high * 1.0001, 60) if high > low else np.array([low * 0.9, low * 1.1])
    for name, values in latencies:
        if values.size:
            ax.hist(
                values,
                bins=bins,
                histtype="step",
                label=name,
                linewidth=1.2,
                weights=np.full(values.size, 100.0 / values.size),
                color=_color(report, name),
            )
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("share of requests (%)")
    ax.set_title("Latency histogram")
    ax.grid(True, alpha=0.3)


def _percentiles(ax: Any, report: Report) -> None:
    summaries = report.summaries()
    names = [run.label for run in report.runs]
    x = np.arange(len(names))
    for offset, (label, attr) in zip(
        (-0.27, 0.0, 0.27), (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")), strict=True
    ):
        values = [getattr(summaries[n], attr) if summaries[n] else math.nan for n in names]
        ax.bar(x + offset, values, 0.27, label=label)
    finite = [getattr(s, a) for s in summaries.values() if s for a in ("p50_ms", "p999_ms")]
    _log_if_wide(ax, [np.asarray(finite, dtype=np.float64)])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency percentiles")
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)


def _provisioning(ax: Any, report: Report) -> None:
    """Servers needed at the target (the offered load) and each mode's ready servers over the window."""
    runs = provisioning_runs(report)
    series = runs[0].extra["provisioning"]["series"]
    ax.plot(series["t_h"], series["needed"], color="black", linewidth=1.0, label="needed at the target")
    for run in runs:
        mine = run.extra["provisioning"]["series"]
        ax.step(
            mine["t_h"], mine["ready"], where="post", linewidth=1.0, label=run.label, color=_color(report, run.label)
        )
    ax.set_xlabel("trace hours from the start of the window")
    ax.set_ylabel("servers")
    ax.set_title("Ready servers and the servers the offered load needs")
    ax.grid(True, alpha=0.3)


def _save(figure: Any, path: Path, legend_ax: Any | None = None) -> Path:
    if legend_ax is not None and legend_ax.get_legend_handles_labels()[0]:
        legend_ax.legend(fontsize="small")
    figure.savefig(path, format="png")
    return path


def write_plots(report: Report, out_dir: str | Path) -> list[Path]:
    """Writes the six PNG plots (``PLOT_FILES``) of ``report`` into ``out_dir``, and with
    provisioning runs ``PROVISIONING_PLOT`` after them.

    Returns:
        The paths written, in ``PLOT_FILES`` order (then ``PROVISIONING_PLOT``).

    Raises:
        PlotsUnavailable: matplotlib is not installed (nothing is written).
    """
    out = Path(out_dir)
    _figure(1, 1)  # fails before anything is written when matplotlib is missing
    out.mkdir(parents=True, exist_ok=True)
    title = f"{report.spec.name} ({report.kind})"
    paths = []
    for name, draw in zip(
        PLOT_FILES[:5],
        (_latency_over_time, _throughput_over_time, _server_distribution, _learning_curve, _latency_histogram),
        strict=True,
    ):
        figure, axes = _figure(8, 4.5)
        draw(axes[0][0], report)
        figure.suptitle(title, fontsize="medium")
        paths.append(_save(figure, out / name, axes[0][0]))
    figure, axes = _figure(13, 8, 2, 2)
    _percentiles(axes[0][0], report)
    _latency_over_time(axes[0][1], report)
    _server_distribution(axes[1][0], report)
    _learning_curve(axes[1][1], report)
    axes[0][1].legend(fontsize="small")
    if axes[1][1].get_legend_handles_labels()[0]:
        axes[1][1].legend(fontsize="small")
    figure.suptitle(f"{title}: summary", fontsize="large")
    paths.append(_save(figure, out / PLOT_FILES[5]))
    if provisioning_runs(report) and provisioning_runs(report)[0].extra["provisioning"]["series"]:
        figure, axes = _figure(12, 4.5)
        _provisioning(axes[0][0], report)
        figure.suptitle(title, fontsize="medium")
        paths.append(_save(figure, out / PROVISIONING_PLOT, axes[0][0]))
    return paths
