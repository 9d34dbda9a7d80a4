"""Routing quality of every registered strategy on one seeded heterogeneous simulation.

Five simulated servers with speeds 1, 1, 2, 2, 4 (4 workers each, 20 ms mean
exponential service at speed 1) take Poisson arrivals at a fraction of their
capacity (default 80 %). Each strategy registered in STRATEGIES routes the same
arrivals (same seed) through the real DecisionCore, in process. Prints JSON:
per strategy the latency it achieved (mean, p50, p99, p99.9, after a warm-up),
each server's share, and the decision cost per call in µs (wall time inside
``core.select`` and ``core.report_outcomes`` only, not the simulator's own
bookkeeping). ``--markdown`` prints a table for the README instead.

Usage: python bench/routing_quality.py [--seed 1] [--requests 50000] [--load 0.8] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

from loadwarden.backend_sim import Arrivals, Scenario, SimServer, capacity_per_s, simulate
from loadwarden.policy.strategies import STRATEGIES

SPEEDS = (1, 1, 2, 2, 4)
WORKERS = 4
BASE_MS = 20.0


def servers() -> tuple[SimServer, ...]:
    return tuple(SimServer(f"s{i}", speed=speed, workers=WORKERS, base_ms=BASE_MS) for i, speed in enumerate(SPEEDS, 1))


def run(seed: int, requests: int, load: float, warmup: int) -> dict[str, Any]:
    backends = servers()
    capacity = capacity_per_s(backends)
    scenario = Scenario(backends, Arrivals(rate_per_s=load * capacity, requests=requests), seed=seed)
    results: dict[str, Any] = {}
    for name in STRATEGIES:
        began = time.perf_counter()
        try:
            result = simulate(scenario, name, timer=time.perf_counter)
        except ValueError as exc:  # a strategy that cannot run on defaults here says why
            results[name] = {"error": str(exc)}
            continue
        elapsed = time.perf_counter() - began
        summary = result.summary(warmup=warmup)
        timing = result.timing
        assert timing is not None
        results[name] = {
            "mean_ms": round(summary.mean_ms, 3),
            "p50_ms": round(summary.p50_ms, 3),
            "p99_ms": round(summary.p99_ms, 3),
            "p999_ms": round(summary.p999_ms, 3),
            "success_rate": round(summary.success_rate, 4),
            "explored_rate": round(summary.explored_rate, 4),
            "share": {sid: round(share, 4) for sid, share in summary.share.items()},
            "select_us": round(timing.select_us, 2),
            "outcome_us": round(timing.outcome_us, 2),
            "decision_us": round((timing.select_s + timing.outcome_s) / timing.selects * 1e6, 2),
            "run_s": round(elapsed, 2),
        }
    return {
        "benchmark": "routing_quality",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "scenario": {
            "seed": seed,
            "requests": requests,
            "warmup_requests": warmup,
            "load": load,
            "capacity_per_s": round(capacity, 1),
            "rate_per_s": round(load * capacity, 1),
            "servers": [{"id": s.id, "speed": s.speed, "workers": s.workers, "base_ms": s.base_ms} for s in backends],
        },
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    sc = report["scenario"]
    ids = [s["id"] for s in sc["servers"]]
    speeds = ", ".join(f"{s['id']}×{s['speed']:g}" for s in sc["servers"])
    lines = [
        f"Seed {sc['seed']}, {sc['requests']} requests (first {sc['warmup_requests']} left out), Poisson arrivals "
        f"at {sc['load']:.0%} of capacity ({sc['rate_per_s']:g}/s); servers {speeds} (speed), "
        f"{sc['servers'][0]['workers']} workers, {sc['servers'][0]['base_ms']:g} ms mean service at speed 1.",
        "",
        "| strategy | mean ms | p50 ms | p99 ms | p99.9 ms | share " + " / ".join(ids) + " (%) "
        "| select µs | outcome µs |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for name, r in report["results"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | | | |")
            continue
        share = " / ".join(f"{r['share'][sid] * 100:.0f}" for sid in ids)
        lines.append(
            f"| {name} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['p999_ms']:.1f} "
            f"| {share} | {r['select_us']:.1f} | {r['outcome_us']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="seeds arrivals, request sizes and routing")
    parser.add_argument("--requests", type=int, default=50_000, help="arrivals per strategy")
    parser.add_argument("--load", type=float, default=0.8, help="arrival rate as a fraction of capacity")
    parser.add_argument(
        "--warmup", type=int, default=None, help="leading requests left out of the statistics (default: a tenth)"
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests: must be >= 1")
    if not args.load > 0:
        parser.error("--load: must be > 0")
    warmup = args.requests // 10 if args.warmup is None else args.warmup
    if not 0 <= warmup < args.requests:
        parser.error(f"--warmup: must be in [0, {args.requests - 1}]")
    report = run(args.seed, args.requests, args.load, warmup)
    print(markdown(report) if args.markdown else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
