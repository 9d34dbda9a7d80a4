"""Dynamic batch sizing against every fixed size, on one seeded load ramp.

A deterministic, in-process simulation: no service, no gRPC, no wall clock. One
job runs batches back to back while the host's background load ``L(t)`` (percent)
follows a trapezoid over ``--duration-s`` simulated seconds: 10 % for the first
15 %, up to 95 % over the next 25 %, 95 % for 20 %, down to 10 % over 25 %, 10 %
for the last 15 %. Each sizing policy faces the same ramp and the same seeded
noise. The dynamic policies are the service's own ``Operation`` (its gate,
bounds and controller from ``loadwarden.policy``), driven with the
simulated time as its clock and an injected ``LoadReading`` per batch.

The model of one batch of ``n`` items started at time ``t``:

    u(n, t)    = min(U_MAX, (L(t) + n * item_load_percent) / 100)   host utilisation while it runs
    latency_ms = (overhead_ms + per_item_ms * n / (1 - u(n, t))) * e^X,  X ~ Normal(0, latency_sigma)

``1 / (1 - u)`` is the M/M/1 slowdown: service time stretches without bound as
the host approaches 100 % (capped at ``U_MAX`` = 1 - 1/max_slowdown). The fixed
``overhead_ms`` per batch (connection, commit) is what big batches amortise at
low load; at high load a big batch both waits behind the background work and
adds its own load (``item_load_percent`` per item in flight), so its latency
blows up. The load is sampled at the batch's start and held for the whole
batch. The monitor the threshold policy reads sees the same host:

    reading    = clamp(L(t) + n_previous * item_load_percent + Y, 0, 100),  Y ~ Normal(0, load_noise_percent)

Policies: ``threshold`` (seed 003: min 5, max 100, default 25, 50 % / 80 %),
``latency_target`` (AIMD on each batch's latency against ``--target-ms``; the
load is not used) and ``fixed_N`` for every N in the grid. Metrics: throughput
= items finished / simulated seconds until the last batch ends; batch latency
p50 / p95 / p99 / max over all batches; throughput per load phase (background load at
the batch's start below 50 %, 50-80 %, 80 % and above). ``best_fixed`` names the
fixed size with the highest throughput, the one with the lowest p95, and, for
each dynamic policy, the fixed size with the highest throughput whose p95 is no
worse than that policy's (null when none is).

Usage: python bench/batching.py [--seed 1] [--duration-s 300] [--target-ms 500] [--markdown]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from loadwarden.policy import LoadReading, Operation, parse_operation

FIXED_SIZES = (5, 10, 25, 50, 75, 100)
LOW_LOAD_PERCENT, HIGH_LOAD_PERCENT = 10.0, 95.0
# Trapezoid corners: (fraction of the duration, background load percent).
PROFILE = (
    (0.0, LOW_LOAD_PERCENT),
    (0.15, LOW_LOAD_PERCENT),
    (0.40, HIGH_LOAD_PERCENT),
    (0.60, HIGH_LOAD_PERCENT),
    (0.85, LOW_LOAD_PERCENT),
    (1.0, LOW_LOAD_PERCENT),
)
PHASES = (("low", 0.0, 50.0), ("medium", 50.0, 80.0), ("high", 80.0, math.inf))


@dataclass(frozen=True)
class Model:
    """The simulated host (see the module docstring for the formulas).

    Attributes:
        per_item_ms: Work per item on an idle host, milliseconds.
        overhead_ms: Fixed cost per batch, milliseconds, not slowed by load.
        item_load_percent: Host load each item of a running batch adds, percent.
        max_slowdown: Slowdown cap 1 / (1 - U_MAX) of a saturated host, > 1.
        latency_sigma: Log-normal noise of a batch's latency, sigma of its log.
        load_noise_percent: Standard deviation of the monitor's reading error, percent.
    """

    per_item_ms: float = 2.0
    overhead_ms: float = 50.0
    item_load_percent: float = 0.1
    max_slowdown: float = 100.0
    latency_sigma: float = 0.1
    load_noise_percent: float = 2.0

    def utilisation(self, background_percent: float, size: int) -> float:
        return min(1.0 - 1.0 / self.max_slowdown, (background_percent + size * self.item_load_percent) / 100.0)

    def latency_ms(self, background_percent: float, size: int, rng: random.Random) -> float:
        slowdown = 1.0 / (1.0 - self.utilisation(background_percent, size))
        return (self.overhead_ms + self.per_item_ms * size * slowdown) * math.exp(rng.gauss(0.0, self.latency_sigma))

    def reading(self, background_percent: float, previous_size: int, rng: random.Random) -> float:
        value = background_percent + previous_size * self.item_load_percent + rng.gauss(0.0, self.load_noise_percent)
        return min(100.0, max(0.0, value))


def background_load(t_s: float, duration_s: float) -> float:
    """The trapezoid's background load at ``t_s``, percent (10 % after the end)."""
    x = t_s / duration_s
    for (x0, y0), (x1, y1) in itertools.pairwise(PROFILE):
        if x0 <= x < x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return PROFILE[-1][1]


class Policy(Protocol):
    @property
    def adjustments(self) -> int: ...

    def size(self, now_s: float, reading: LoadReading) -> int: ...

    def observe(self, size: int, duration_ms: float) -> None: ...


class Fixed:
    def __init__(self, size: int) -> None:
        self._size = size
        self.adjustments = 0

    def size(self, now_s: float, reading: LoadReading) -> int:
        return self._size

    def observe(self, size: int, duration_ms: float) -> None:
        return None


class Dynamic:
    """The service's Operation; simulated seconds are both its monotonic and its wall clock."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.operation = Operation(parse_operation("data-import", "name", settings, "bench"))

    @property
    def adjustments(self) -> int:
        return self.operation.adjustments_total

    def size(self, now_s: float, reading: LoadReading) -> int:
        return self.operation.decide(now_s, now_s, reading).size

    def observe(self, size: int, duration_ms: float) -> None:
        self.operation.observe(size, duration_ms, True)


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def simulate(policy: Policy, model: Model, duration_s: float, seed: int) -> dict[str, Any]:
    """Runs batches back to back until ``duration_s``; the last one may end after it."""
    rng = random.Random(seed)
    now_s, previous, items = 0.0, 0, 0
    latencies: list[float] = []
    sizes: list[int] = []
    phase_items = {name: 0 for name, _, _ in PHASES}
    phase_s = {name: 0.0 for name, _, _ in PHASES}
    while now_s < duration_s:
        background = background_load(now_s, duration_s)
        size = policy.size(now_s, LoadReading(model.reading(background, previous, rng)))
        latency_ms = model.latency_ms(background, size, rng)
        policy.observe(size, latency_ms)
        phase = next(name for name, low, high in PHASES if low <= background < high)
        phase_items[phase] += size
        phase_s[phase] += latency_ms / 1000.0
        latencies.append(latency_ms)
        sizes.append(size)
        items += size
        previous = size
        now_s += latency_ms / 1000.0
    latencies.sort()
    return {
        "items": items,
        "elapsed_s": round(now_s, 3),
        "throughput_items_per_s": round(items / now_s, 2),
        "batches": len(sizes),
        "mean_size": round(items / len(sizes), 2),
        "p50_batch_ms": round(quantile(latencies, 0.50), 1),
        "p95_batch_ms": round(quantile(latencies, 0.95), 1),
        "p99_batch_ms": round(quantile(latencies, 0.99), 1),
        "max_batch_ms": round(latencies[-1], 1),
        "adjustments": policy.adjustments,
        "throughput_by_phase": {
            name: round(phase_items[name] / phase_s[name], 2) if phase_s[name] else None for name, _, _ in PHASES
        },
    }


def policies(target_ms: float, cooldown_ms: int) -> dict[str, tuple[dict[str, Any] | None, Callable[[], Policy]]]:
    """Name -> (dynamic settings or None, factory); dynamic first, then the fixed grid."""
    seed003 = {
        "min_batch_size": 5,
        "max_batch_size": 100,
        "default_batch_size": 25,
        "low_threshold_percent": 50.0,
        "high_threshold_percent": 80.0,
        "cooldown_ms": cooldown_ms,
    }
    threshold = {**seed003, "mode": "threshold"}
    latency = {**seed003, "mode": "latency_target", "target_latency_ms": target_ms}
    out: dict[str, tuple[dict[str, Any] | None, Callable[[], Policy]]] = {
        "threshold": (threshold, lambda: Dynamic(threshold)),
        "latency_target": (latency, lambda: Dynamic(latency)),
    }
    for n in FIXED_SIZES:
        out[f"fixed_{n}"] = (None, functools.partial(Fixed, n))
    return out


def best_fixed(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fixed = {name: r for name, r in results.items() if name.startswith("fixed_")}
    dynamic = [name for name in results if name not in fixed]
    by_throughput = max(fixed, key=lambda name: fixed[name]["throughput_items_per_s"])
    by_p95 = min(fixed, key=lambda name: fixed[name]["p95_batch_ms"])
    within: dict[str, str | None] = {}
    for name in dynamic:
        fits = [f for f in fixed if fixed[f]["p95_batch_ms"] <= results[name]["p95_batch_ms"]]
        within[name] = max(fits, key=lambda f: fixed[f]["throughput_items_per_s"]) if fits else None
    return {"by_throughput": by_throughput, "by_p95": by_p95, "by_throughput_within_p95_of": within}


def run(seed: int, duration_s: float, target_ms: float, cooldown_ms: int, model: Model) -> dict[str, Any]:
    table = policies(target_ms, cooldown_ms)
    results = {name: simulate(factory(), model, duration_s, seed) for name, (_, factory) in table.items()}
    return {
        "benchmark": "batching",
        "scenario": {
            "seed": seed,
            "duration_s": duration_s,
            "profile": {"shape": "trapezoid", "corners": [list(c) for c in PROFILE]},
            "model": asdict(model),
            "fixed_sizes": list(FIXED_SIZES),
            "dynamic": {name: settings for name, (settings, _) in table.items() if settings is not None},
        },
        "results": results,
        "best_fixed": best_fixed(results),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| policy | items/s | p50 batch ms | p95 batch ms | p99 batch ms | max batch ms | mean size | adjustments "
        "| items/s at load < 50 / 50-80 / >= 80 % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["results"].items():
        phases = " / ".join("-" if v is None else f"{v:.0f}" for v in r["throughput_by_phase"].values())
        lines.append(
            f"| {name} | {r['throughput_items_per_s']:.1f} | {r['p50_batch_ms']:.0f} | "
            f"{r['p95_batch_ms']:.0f} | {r['p99_batch_ms']:.0f} | {r['max_batch_ms']:.0f} | "
            f"{r['mean_size']:.1f} | {r['adjustments']} | {phases} |"
        )
    best = report["best_fixed"]
    lines.append("")
    lines.append(f"Best fixed size by throughput: {best['by_throughput']}; by p95: {best['by_p95']}.")
    for name, fixed in best["by_throughput_within_p95_of"].items():
        lines.append(f"Best fixed size with a p95 no worse than {name}'s: {fixed or 'none'}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration-s", type=float, default=300.0, help="simulated seconds of the load ramp")
    parser.add_argument("--target-ms", type=float, default=500.0, help="latency_target policy's target, ms")
    parser.add_argument("--cooldown-ms", type=int, default=0, help="dynamic policies' cooldown, simulated ms")
    parser.add_argument("--markdown", action="store_true", help="print a README table instead of JSON")
    args = parser.parse_args()
    if not args.duration_s > 0 or not args.target_ms > 0 or args.cooldown_ms < 0:
        parser.error("--duration-s and --target-ms must be > 0, --cooldown-ms >= 0")
    report = run(args.seed, args.duration_s, args.target_ms, args.cooldown_ms, Model())
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
