"""Runs the seed 002 comparison: each strategy in turn over the same backends and arrivals; writes the outputs.

See the package docstring (``examples/seed002_proxy/__init__.py``) for what it does;
``python -m examples.seed002_proxy --help`` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadwarden.backend_sim import ProcessGroup
from loadwarden.sdk import AsyncClient, NotFoundError, PoolConfig, ServerSpec

from .backends import Backend, BackendSpec
from .collector import MetricsCollector
from .proxy import ReverseProxy
from .report import RunResult, write_plots, write_report
from .traffic import TrafficGenerator, arrival_times

STRATEGIES = ("round_robin", "least_connections", "q_learning")
# The seed's three servers at its base delay of 50 ms, of unequal speed: 160, 80 and 40 req/s.
BACKENDS = (BackendSpec("server1", 4.0, 2), BackendSpec("server2", 2.0, 2), BackendSpec("server3", 1.0, 2))
BASE_DELAY_MS = 50.0
# Half the capacity (280 req/s): round robin gives server3 a third, 47 req/s, more than its 40.
RATE_PER_S = 140.0
DURATION_S = 25.0  # per strategy; 3 x 25 s keeps the whole run under two minutes
QUICK_DURATION_S = 5.0
TIMEOUT_MS = 2_000.0  # the proxy's wait for a backend (the seed's 30 s would outlast a run)
POLL_INTERVAL_S = 1.0  # the seed's metrics polling interval
SEED = 1
POOL_PREFIX = "seed002-"
DEFAULT_OUT = Path("eval-out/seed002-proxy")
STARTUP_TIMEOUT_S = 15.0  # bound of the wait for a started `loadwarden serve`, seconds
SETTLE_TIMEOUT_S = 30.0  # bound of the wait for the backends to go idle between runs, seconds
LISTENING = re.compile(r"^loadwarden listening on (\S+)$", re.MULTILINE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.seed002_proxy",
        description="Seed 002: round robin, least connections and Q-learning behind an aiohttp reverse proxy "
        "that asks loadwarden for every request; writes report.md, report.json, requests.csv, "
        "server_metrics.csv and the plots.",
    )
    parser.add_argument(
        "--target", help="a running loadwarden service (host:port); by default the example starts its own"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:g} s per strategy (for tests)")
    parser.add_argument("--duration-s", type=float, help=f"seconds of traffic per strategy (default {DURATION_S:g})")
    parser.add_argument("--rate", type=float, default=RATE_PER_S, help=f"requests per second (default {RATE_PER_S:g})")
    parser.add_argument("--timeout-ms", type=float, default=TIMEOUT_MS, help=f"proxy timeout (default {TIMEOUT_MS:g})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seeds arrivals and service times (default {SEED})")
    parser.add_argument(
        "--strategies", default=",".join(STRATEGIES), help=f"comma-separated (default {','.join(STRATEGIES)})"
    )
    args = parser.parse_args(argv)
    if args.duration_s is None:
        args.duration_s = QUICK_DURATION_S if args.quick else DURATION_S
    for name in ("duration_s", "rate", "timeout_ms"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    args.strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    if not args.strategies:
        parser.error("--strategies names none")
    return args


def loadwarden_command() -> str:
    """The ``loadwarden`` executable next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "loadwarden"
    found = str(beside) if beside.is_file() else shutil.which("loadwarden")
    if found is None:
        raise SystemExit("loadwarden not found: install the package, or start a service and pass --target")
    return found


async def start_service(group: ProcessGroup) -> str:
    """Starts ``loadwarden serve`` on a free port of 127.0.0.1 (in-memory state); returns its address."""
    child = group.start("loadwarden", [loadwarden_command(), "serve", "--listen", "127.0.0.1:0"])
    match = await child.wait_for(LISTENING, STARTUP_TIMEOUT_S)
    return match.group(1)


async def wait_until(condition: Any, what: str, timeout_s: float) -> None:
    """Waits until ``condition()`` holds; raises TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.02)


async def configure_pool(client: AsyncClient, strategy: str, backends: Sequence[Backend]) -> str:
    """Creates the strategy's pool afresh (a Q-table of an earlier run is not kept); returns its name.

    In a service config file it would read::

        [pools.seed002-q_learning]
        strategy = "q_learning"
        servers = [{ id = "server1", address = "127.0.0.1:PORT" }, ...]
    """
    pool = f"{POOL_PREFIX}{strategy}"
    with contextlib.suppress(NotFoundError):
        await client.admin.delete_pool(pool)
    servers = [ServerSpec(b.spec.id, b.address) for b in backends]
    await client.admin.configure_pool(PoolConfig(pool, strategy=strategy, servers=servers))
    return pool


async def run_strategy(
    strategy: str,
    client: AsyncClient,
    backends: Sequence[Backend],
    proxy: ReverseProxy,
    collector: MetricsCollector,
    generator: TrafficGenerator,
    times: list[float],
    seed: int,
) -> RunResult:
    """One strategy's run: a fresh pool, reseeded backends, the arrivals, then the pool's strategy stats."""
    await wait_until(
        lambda: proxy.in_flight == 0 and all(b.active_requests == 0 for b in backends),
        "the backends going idle before the next run",
        SETTLE_TIMEOUT_S,
    )
    pool = await configure_pool(client, strategy, backends)
    for index, backend in enumerate(backends):
        backend.reset(seed * 1_000 + index)
    collector.use(pool, strategy)
    await collector.poll_once()  # the pool knows every backend's load before the first request
    proxy.use(pool, strategy)
    traffic = await generator.run(times)
    await wait_until(lambda: proxy.in_flight == 0, "the proxy answering its last request", SETTLE_TIMEOUT_S)
    records = sorted(proxy.records, key=lambda r: r.time_s)  # logged as answered; reported by arrival
    await client.flush_outcomes(timeout_s=5.0)
    status = await client.load_status(pool)
    stats = dict(status.pools[0].strategy_stats) if status.pools else {}
    health = [s for s in collector.samples if s.strategy == strategy]
    return RunResult(strategy, pool, records, traffic, health, stats)


def setup_of(args: argparse.Namespace, backends: Sequence[Backend], target: str, own: bool) -> dict[str, Any]:
    return {
        "backends": [
            {
                "id": b.spec.id,
                "speed": b.spec.speed,
                "workers": b.spec.workers,
                "address": b.address,
                "capacity_per_s": round(b.spec.capacity_per_s(BASE_DELAY_MS), 3),
            }
            for b in backends
        ],
        "base_delay_ms": BASE_DELAY_MS,
        "capacity_per_s": round(sum(b.spec.capacity_per_s(BASE_DELAY_MS) for b in backends), 3),
        "rate_per_s": args.rate,
        "duration_s": args.duration_s,
        "timeout_ms": args.timeout_ms,
        "poll_interval_s": POLL_INTERVAL_S,
        "seed": args.seed,
        "strategies": list(args.strategies),
        "service": "started by the example" if own else target,
        "quick": args.quick,
    }


async def main_async(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # so the finally blocks run
    started = time.perf_counter()
    out: Path = args.out
    group = ProcessGroup(out / "logs")  # holds the service the example starts, if it starts one
    backends = [Backend(spec, BASE_DELAY_MS, args.seed * 1_000 + i) for i, spec in enumerate(BACKENDS)]
    try:
        target: str = args.target if args.target is not None else await start_service(group)
        for backend in backends:
            await backend.start()
        async with AsyncClient(target) as client:
            proxy = ReverseProxy(client, args.timeout_ms / 1000.0)
            collector = MetricsCollector(client, {b.spec.id: b.address for b in backends}, POLL_INTERVAL_S)
            url = await proxy.start()
            await collector.start()
            try:
                generator = TrafficGenerator(url, args.timeout_ms / 1000.0 + 1.0)
                times = arrival_times(args.rate, args.duration_s, args.seed)
                print(
                    f"loadwarden at {target}; proxy at {url}; backends "
                    + ", ".join(f"{b.spec.id}={b.address}" for b in backends),
                    flush=True,
                )
                runs = []
                for strategy in args.strategies:
                    began = time.perf_counter()
                    run = await run_strategy(strategy, client, backends, proxy, collector, generator, times, args.seed)
                    runs.append(run)
                    print(
                        f"{strategy}: {run.traffic.sent:,} requests in {time.perf_counter() - began:.1f} s, "
                        f"answers {dict(sorted(run.traffic.statuses.items()))}",
                        flush=True,
                    )
            finally:
                await collector.stop()
                await proxy.stop()
        server_ids = [b.spec.id for b in backends]
        report, paths = write_report(runs, setup_of(args, backends, target, args.target is None), server_ids, out)
        paths += write_plots(runs, server_ids, out)
    finally:
        for backend in backends:
            await backend.stop()
        group.close()
    print()
    print((out / "report.md").read_text(encoding="utf-8"), end="")
    print()
    print(f"best: {report['best']['strategy']}")
    print(f"wrote {', '.join(p.name for p in paths)} to {out}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))
