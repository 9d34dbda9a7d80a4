"""What a run produced: per-request and per-load-report records, and their summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


class RequestRecord(NamedTuple):
    """One simulated request.

    Attributes:
        time_s: Arrival time, simulated seconds from the start of the run.
        server: Id of the server the decision core chose.
        latency_ms: Queue wait plus service time.
        success: False when the server failed the request.
        explored: What the decision core said about this selection.
    """

    time_s: float
    server: str
    latency_ms: float
    success: bool
    explored: bool


class LoadRecord(NamedTuple):
    """One load report sent to the decision core (the same numbers).

    Attributes:
        time_s: When it was sent, simulated seconds.
        server: Reporting server id.
        cpu_percent: Busy workers / workers x 100, averaged over the interval.
        active_requests: Requests in service plus queued, at the report.
        mean_latency_ms: Mean latency of the requests completed in the interval;
            the previous interval's when none completed, 0 before any did.
        error_rate: Failed / completed in the interval, 0-1.
    """

    time_s: float
    server: str
    cpu_percent: float
    active_requests: int
    mean_latency_ms: float
    error_rate: float


def reward(latency_ms: float) -> float:
    """The reward the learning curve averages: ``-latency_ms / 10``."""
    return -latency_ms / 10.0


@dataclass(frozen=True, slots=True)
class Summary:
    """Statistics over a run's requests (after any warm-up).

    Latencies are in ms; percentiles are nearest-rank.

    Attributes:
        requests: Requests summarised.
        mean_ms: Mean latency.
        p50_ms: Median latency.
        p95_ms: 95th percentile latency.
        p99_ms: 99th percentile latency.
        p999_ms: 99.9th percentile latency.
        throughput_per_s: Requests completed per simulated second, from the
            first arrival to the last completion.
        success_rate: Successful / requests, 0-1.
        explored_rate: Selections the strategy marked as explored / requests.
        share: Fraction of requests per server id (every server, 0 included).
        learning_curve: Mean reward (``-latency_ms / 10``) of consecutive blocks
            of ``curve_window`` requests in arrival order: a moving average
            sampled once per window.
        curve_window: Requests per learning-curve point.
    """

    requests: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    throughput_per_s: float
    success_rate: float
    explored_rate: float
    share: dict[str, float]
    learning_curve: tuple[float, ...]
    curve_window: int

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form, latencies rounded to µs."""
        r = 3
        return {
            "requests": self.requests,
            "mean_ms": round(self.mean_ms, r),
            "p50_ms": round(self.p50_ms, r),
            "p95_ms": round(self.p95_ms, r),
            "p99_ms": round(self.p99_ms, r),
            "p999_ms": round(self.p999_ms, r),
            "throughput_per_s": round(self.throughput_per_s, 1),
            "success_rate": round(self.success_rate, 4),
            "explored_rate": round(self.explored_rate, 4),
            "share": {k: round(v, 4) for k, v in self.share.items()},
            "learning_curve": [round(v, 3) for v in self.learning_curve],
            "curve_window": self.curve_window,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank ``q`` quantile (0 < q <= 1) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(
    records: Sequence[RequestRecord], server_ids: Sequence[str], *, warmup: int = 0, curve_window: int = 500
) -> Summary:
    """Summarises ``records[warmup:]``.

    Args:
        records: Requests in arrival order.
        server_ids: Every server of the run, so servers that got nothing show 0.
        warmup: Leading requests left out (e.g. while a strategy learns).
        curve_window: Requests per learning-curve point (>= 1).

    Raises:
        ValueError: ``warmup`` leaves no request, or ``curve_window`` < 1.
    """
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < len(records):
        raise ValueError(f"warmup: must be an integer in [0, {len(records) - 1}], got {warmup!r}")
    if isinstance(curve_window, bool) or not isinstance(curve_window, int) or curve_window < 1:
        raise ValueError(f"curve_window: must be an integer >= 1, got {curve_window!r}")
    kept = records[warmup:]
    n = len(kept)
    latencies = [r.latency_ms for r in kept]
    ordered = sorted(latencies)
    counts = dict.fromkeys(server_ids, 0)
    for r in kept:
        counts[r.server] = counts.get(r.server, 0) + 1
    end_s = max(r.time_s + r.latency_ms / 1000.0 for r in kept)
    span_s = end_s - kept[0].time_s
    curve = tuple(
        sum(map(reward, latencies[i : i + curve_window])) / curve_window
        for i in range(0, n - curve_window + 1, curve_window)
    )
    return Summary(
        requests=n,
        mean_ms=sum(latencies) / n,
        p50_ms=percentile(ordered, 0.50),
        p95_ms=percentile(ordered, 0.95),
        p99_ms=percentile(ordered, 0.99),
        p999_ms=percentile(ordered, 0.999),
        throughput_per_s=n / span_s if span_s > 0 else math.inf,
        success_rate=sum(1 for r in kept if r.success) / n,
        explored_rate=sum(1 for r in kept if r.explored) / n,
        share={sid: c / n for sid, c in counts.items()},
        learning_curve=curve,
        curve_window=curve_window,
    )
