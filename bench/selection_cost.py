"""Decision cost by pool size: µs per decision of every strategy at 10 and 10,000 servers.

Builds a real DecisionCore in process (fake clock, seeded RNG) per strategy,
pool size and weighting, and times decisions: ``core.select`` plus reporting
the outcome with ``core.report_outcomes``, with --in-flight decisions
outstanding (each selection reports the oldest one once that many are open),
so in-flight counts move both ways as in service. Weights are either mixed
(1..5, seeded) or all 1. Rounds alternate between the two sizes, so both see
the same machine state; each cell is the median of --rounds rounds of
--decisions decisions, after a warm-up round that also lets strategies build
their indexes. ``ratio`` is the large pool's cost over the small one's, both
from this run: the target is at most 2.0, i.e. a decision that does not grow
with the pool. A strategy whose ``max_servers`` is below the large size (the
tabular ``q_learning``) is reported as not applicable there, with the reason.

Prints JSON with the machine (CPUs, Python, platform) and per strategy and
weighting the µs per decision at each size and their ratio.

Usage: python bench/selection_cost.py [--small 10] [--large 10000] [--rounds 7]
                                      [--decisions 2000] [--in-flight 16] [--seed 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import time
from collections import deque
from typing import Any

from loadwarden.policy import OutcomeReport
from loadwarden.policy.strategies import STRATEGIES
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec

TARGET_RATIO = 2.0
POOL = "bench"
WEIGHTINGS = ("mixed", "equal")
MAX_MIXED_WEIGHT = 5


class Bench:
    """One strategy over one pool: decisions with a fixed number outstanding."""

    def __init__(self, strategy: str, servers: int, weighting: str, in_flight: int, seed: int) -> None:
        rng = random.Random(seed)
        self.core = DecisionCore(
            CoreLimits(max_servers_per_pool=max(servers, 10_000), max_servers=max(servers, 100_000)),
            clock=ManualClock(),
            rng=random.Random(seed),
        )
        weights = [rng.randint(1, MAX_MIXED_WEIGHT) if weighting == "mixed" else 1 for _ in range(servers)]
        if weighting == "mixed" and len(set(weights)) == 1:
            weights[0] = weights[0] % MAX_MIXED_WEIGHT + 1  # mixed means at least two weights
        specs = [ServerSpec(f"srv-{i:05d}", f"10.0.{i // 256 % 256}.{i % 256}:8080", w) for i, w in enumerate(weights)]
        self.core.configure_pool(PoolSettings(name=POOL, strategy=strategy), specs)
        # A latency per server, so learning strategies see servers that differ.
        self.latency_ms = {spec.id: 5.0 + i % 7 for i, spec in enumerate(specs)}
        self.in_flight = in_flight
        self.open: deque[tuple[str, str]] = deque()  # (decision id, server id), oldest first

    def run(self, decisions: int) -> float:
        """µs per decision over ``decisions`` selections and as many outcomes."""
        core, open_, latency_ms = self.core, self.open, self.latency_ms
        gc.collect()
        began = time.perf_counter()
        for _ in range(decisions):
            selection = core.select(POOL)
            open_.append((selection.decision_id, selection.server.id))
            if len(open_) > self.in_flight:
                decision_id, server_id = open_.popleft()
                core.report_outcomes([OutcomeReport(decision_id, True, latency_ms[server_id])])
        return (time.perf_counter() - began) / decisions * 1e6


def measure(strategy: str, weighting: str, args: argparse.Namespace) -> dict[str, Any]:
    sizes = {"small": args.small, "large": args.large}
    limit = STRATEGIES[strategy].max_servers
    benches: dict[str, Bench] = {}
    skipped: dict[str, str] = {}
    for label, servers in sizes.items():
        if limit is not None and servers > limit:
            skipped[label] = f"not applicable: {strategy} serves at most {limit} servers (max_servers)"
        else:
            benches[label] = Bench(strategy, servers, weighting, args.in_flight, args.seed)
    samples: dict[str, list[float]] = {label: [] for label in benches}
    for bench in benches.values():
        bench.run(args.decisions)  # warm-up: first sight of the candidate list, indexes, caches
    for _ in range(args.rounds):
        for label, bench in benches.items():
            samples[label].append(bench.run(args.decisions))
    cell: dict[str, Any] = {}
    for label, servers in sizes.items():
        key = str(servers)
        if label in skipped:
            cell[key] = {"not_applicable": skipped[label]}
        else:
            values = samples[label]
            cell[key] = {"median_us": round(statistics.median(values), 2), "min_us": round(min(values), 2)}
    if not skipped:
        small, large = (statistics.median(samples[label]) for label in ("small", "large"))
        cell["ratio"] = round(large / small, 2)
        cell["under_target"] = large / small <= TARGET_RATIO
    else:
        cell["ratio"] = None
    return cell


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = {name: {weighting: measure(name, weighting, args) for weighting in WEIGHTINGS} for name in STRATEGIES}
    ratios = [cell["ratio"] for by_weighting in results.values() for cell in by_weighting.values() if cell["ratio"]]
    return {
        "benchmark": "selection_cost",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
        },
        "settings": {
            "small": args.small,
            "large": args.large,
            "rounds": args.rounds,
            "decisions_per_round": args.decisions,
            "in_flight": args.in_flight,
            "seed": args.seed,
            "max_mixed_weight": MAX_MIXED_WEIGHT,
        },
        "unit": "µs per decision (select + outcome), median of rounds",
        "results": results,
        "max_ratio": max(ratios) if ratios else None,
        "target_ratio": TARGET_RATIO,
        "under_target": all(ratio <= TARGET_RATIO for ratio in ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="servers in the small pool")
    parser.add_argument("--large", type=int, default=10_000, help="servers in the large pool")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per cell; the median is reported")
    parser.add_argument("--decisions", type=int, default=2_000, help="decisions per round")
    parser.add_argument("--in-flight", type=int, default=16, help="decisions left open before outcomes are reported")
    parser.add_argument("--seed", type=int, default=1, help="seeds weights and the strategies' RNG")
    args = parser.parse_args()
    for name in ("small", "large", "rounds", "decisions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.in_flight < 0:
        parser.error("--in-flight must be >= 0")
    if args.large < args.small:
        parser.error("--large must be >= --small")
    print(json.dumps(run(args), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
