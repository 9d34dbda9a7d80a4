"""Admission control under overload: what a pool of C slots does with 2x C worth of work.

Starts one ``loadwarden serve`` process with a pool of ``--capacity`` slots. This
process then offers work open-loop for ``--seconds``: Poisson arrivals at
``--load`` times the pool's capacity (C / work duration), each one unit of work
that holds a slot for ``--work-ms`` through ``AsyncClient.slot(priority=p,
wait_s=--wait-ms)``, with p drawn from 0 / 5 / 9. Open loop, because closed-loop
clients slow down with the service and hide the overload being measured.

Prints JSON: offered rate, goodput (work completed per second within the window),
admitted latency p50/p99 (acquire asked -> slot released) and the part of it that is
neither queueing nor work (the admission round trips), denials by reason,
per-priority queue wait p50/p99 (as the service measured it), and the most slots
the clients ever held at once (never above the capacity).

Usage: python bench/admission.py [--seconds 10] [--capacity 8] [--work-ms 50] [--load 2]
                                 [--wait-ms 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import select
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from loadwarden.sdk import AsyncClient, LoadwardenError, ResourceExhaustedError, SlotDenied

POOL = "bench"
PRIORITIES = (0, 5, 9)
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


@dataclass
class Results:
    """What the clients saw. Times are perf-counter seconds from the window's start."""

    window_s: float
    offered: Counter[int] = field(default_factory=Counter)  # arrivals by priority
    admitted: Counter[int] = field(default_factory=Counter)
    denied: Counter[int] = field(default_factory=Counter)
    denials: Counter[str] = field(default_factory=Counter)  # by reason
    latencies_s: list[float] = field(default_factory=list)  # admitted: acquire asked -> released
    overheads_s: list[float] = field(default_factory=list)  # admitted: latency - queue wait - work
    queue_waits_s: dict[int, list[float]] = field(default_factory=lambda: {p: [] for p in PRIORITIES})
    completed_in_window: int = 0
    held: int = 0  # slots held by the clients right now
    max_held: int = 0


def percentile_ms(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile `q` (0-1) of `values` in seconds, as milliseconds; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 3)


async def unit_of_work(client: AsyncClient, priority: int, args: argparse.Namespace, began: float, r: Results) -> None:
    asked = time.perf_counter()
    r.offered[priority] += 1
    try:
        async with client.slot(POOL, priority=priority, wait_s=args.wait_ms / 1000) as lease:
            r.held += 1
            r.max_held = max(r.max_held, r.held)
            try:
                await asyncio.sleep(args.work_ms / 1000)  # the work
            finally:
                r.held -= 1
                if time.perf_counter() - began <= r.window_s:
                    r.completed_in_window += 1
    except SlotDenied as denial:
        r.denied[priority] += 1
        r.denials[denial.denial] += 1
        return
    except ResourceExhaustedError:
        r.denied[priority] += 1
        r.denials["RESOURCE_EXHAUSTED"] += 1  # the wait queue was full
        return
    except LoadwardenError as err:
        r.denied[priority] += 1
        r.denials[f"ERROR_{err.code.name}"] += 1
        return
    r.admitted[priority] += 1
    latency_s = time.perf_counter() - asked
    r.latencies_s.append(latency_s)
    r.overheads_s.append(max(0.0, latency_s - lease.queue_wait_s - args.work_ms / 1000))
    r.queue_waits_s[priority].append(lease.queue_wait_s)


async def offer(target: str, args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    rate_per_s = args.load * args.capacity / (args.work_ms / 1000)
    async with AsyncClient(target, timeout_s=5.0) as client:
        for _ in range(args.capacity):  # warm up the channel and the service's code paths
            async with client.slot(POOL):
                pass
        r = Results(window_s=args.seconds)
        tasks: list[asyncio.Task[None]] = []
        began = time.perf_counter()
        due = 0.0
        while True:
            due += rng.expovariate(rate_per_s)
            if due >= args.seconds:
                break
            delay = began + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(unit_of_work(client, rng.choice(PRIORITIES), args, began, r)))
        offered_s = time.perf_counter() - began
        await asyncio.gather(*tasks)
        drained_s = time.perf_counter() - began
        after = (await client.load_status(POOL)).pools[0]

    arrivals = sum(r.offered.values())
    return {
        "offered": arrivals,
        "offered_rate_per_s": round(arrivals / offered_s, 1),
        "target_rate_per_s": round(rate_per_s, 1),
        "capacity_per_s": round(args.capacity / (args.work_ms / 1000), 1),
        "admitted": sum(r.admitted.values()),
        "completed_in_window": r.completed_in_window,
        "goodput_per_s": round(r.completed_in_window / args.seconds, 1),
        "drain_s": round(drained_s - offered_s, 3),
        "admitted_latency_ms": {"p50": percentile_ms(r.latencies_s, 0.5), "p99": percentile_ms(r.latencies_s, 0.99)},
        # The round trips of AcquireSlot and ReleaseSlot: what keeps goodput under capacity.
        "admission_overhead_ms": {"p50": percentile_ms(r.overheads_s, 0.5), "p99": percentile_ms(r.overheads_s, 0.99)},
        "denials": dict(sorted(r.denials.items())),
        "per_priority": {
            str(p): {
                "offered": r.offered[p],
                "admitted": r.admitted[p],
                "denied": r.denied[p],
                "queue_wait_ms": {
                    "p50": percentile_ms(r.queue_waits_s[p], 0.5),
                    "p99": percentile_ms(r.queue_waits_s[p], 0.99),
                },
            }
            for p in PRIORITIES
        },
        "max_concurrency_observed": r.max_held,
        "within_capacity": r.max_held <= args.capacity,
        "after": {"active_leases": after.active_leases, "queue_length": after.queue_length},
    }


def start_service(config: Path) -> tuple[subprocess.Popen[str], str]:
    """Starts ``loadwarden serve`` on a free port; returns the process and its address."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadwarden.server",
            "serve",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "WARNING",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0 and select.select([server.stdout], [], [], left)[0]:
        line = server.stdout.readline()
        if not line:
            break  # exited
        if line.startswith("loadwarden listening on "):
            return server, line.split()[-1]
    stop(server)
    raise SystemExit(f"benchmark service did not start within {STARTUP_TIMEOUT_S} s")


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    try:
        server.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(STOP_TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long work is offered")
    parser.add_argument("--capacity", type=int, default=8, help="the pool's max_concurrency, slots")
    parser.add_argument("--work-ms", type=float, default=50.0, help="how long each unit holds its slot")
    parser.add_argument("--load", type=float, default=2.0, help="offered work as a multiple of capacity")
    parser.add_argument("--wait-ms", type=float, default=500.0, help="longest a unit waits for a slot")
    parser.add_argument("--seed", type=int, default=1, help="seed of arrivals and priorities")
    args = parser.parse_args()
    if args.seconds <= 0 or args.capacity < 1 or args.work_ms <= 0 or args.load <= 0 or args.wait_ms < 0:
        parser.error("--seconds, --capacity, --work-ms and --load must be positive, --wait-ms >= 0")

    with tempfile.TemporaryDirectory(prefix="loadwarden-bench-") as tmp:
        config = Path(tmp) / "admission.toml"
        config.write_text(
            f"[service]\nshutdown_grace_ms = 1000\n\n[pools.{POOL}]\nmax_concurrency = {args.capacity}\n"
            f"max_wait_ms = {max(1, round(args.wait_ms))}\n",
            encoding="utf-8",
        )
        server, target = start_service(config)
        try:
            results = asyncio.run(offer(target, args))
        finally:
            stop(server)
    report = {
        "benchmark": "admission",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "scenario": {
            "capacity": args.capacity,
            "work_ms": args.work_ms,
            "load": args.load,
            "wait_ms": args.wait_ms,
            "seconds": args.seconds,
            "seed": args.seed,
            "priorities": list(PRIORITIES),
        },
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
