"""What an SDK answer costs with the control plane down and the breaker open.

Starts a real service, lets a client learn a pool's servers, stops the service,
trips the breaker, then times many local answers in this process:

  select      Client.select  -> local round robin over the known servers
  route       Client.route   -> the same, with the block timed and nothing reported
  slot        Client.slot    -> a local slot under the "local_limit" policy, released locally
  batch_size  Client.batch_size -> the last size the service gave

Prints JSON with microseconds per answer (mean and p99 over --calls calls) for
the sync and async clients. The target is <= 50 us: a dead control plane must
cost the application almost nothing.

Usage: python bench/sdk_fallback.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable

from loadwarden.sdk import AsyncClient, BreakerConfig, Client
from loadwarden.server import (
    MonitorSettings,
    OperationSettings,
    PoolSettings,
    PoolSpec,
    ServerSpec,
    ServiceConfig,
    start_service,
)

BREAKER = BreakerConfig(consecutive_failures=1, open_wait_s=3600.0, max_open_wait_s=3600.0)


def summary(samples: list[float]) -> dict[str, float]:
    samples.sort()
    return {
        "mean_us": round(sum(samples) / len(samples) * 1e6, 2),
        "p50_us": round(samples[len(samples) // 2] * 1e6, 2),
        "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 2),
    }


def time_sync(fn: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - began)
    return summary(samples)


async def time_async(fn: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    for _ in range(200):
        await fn()
    samples = []
    for _ in range(calls):
        began = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - began)
    return summary(samples)


async def main(calls: int) -> dict[str, object]:
    pool = PoolSpec(PoolSettings(name="api"), tuple(ServerSpec(f"s{i}", f"127.0.0.1:{9000 + i}") for i in range(3)))
    operation = OperationSettings(name="import", mode="latency_target", target_latency_ms=100.0, default_batch_size=7)
    config = ServiceConfig(
        listen="127.0.0.1:0", pools=(pool,), operations=(operation,), monitor=MonitorSettings(enabled=False)
    )
    running = await start_service(config)
    sync = Client(running.target, timeout_s=0.5, breaker=BREAKER)
    aio = AsyncClient(running.target, timeout_s=0.5, breaker=BREAKER)
    for _ in range(6):  # learn the servers and a batch size while the service is up
        await asyncio.to_thread(sync.select, "api")
        await aio.select("api")
    await asyncio.to_thread(sync.batch_size, "import")
    await aio.batch_size("import")
    await running.stop(0)
    # One failed call per method trips its breaker (consecutive_failures=1).
    for method in (sync.select, sync.batch_size):
        await asyncio.to_thread(method, "api" if method == sync.select else "import")
    sync.acquire_slot("api")
    await aio.select("api")
    await aio.batch_size("import")
    await aio.acquire_slot("api")
    breaker = sync.breaker("SelectServer")
    assert breaker is not None and breaker.state.name == "OPEN"

    def route() -> None:
        with sync.route("api"):
            pass

    def slot() -> None:
        with sync.slot("api"):
            pass

    async def aroute() -> None:
        async with aio.route("api"):
            pass

    async def aslot() -> None:
        async with aio.slot("api"):
            pass

    results = {
        "sync": {
            "select": time_sync(lambda: sync.select("api"), calls),
            "route": time_sync(route, calls),
            "slot": time_sync(slot, calls),
            "batch_size": time_sync(lambda: sync.batch_size("import"), calls),
        },
        "async": {
            "select": await time_async(lambda: aio.select("api"), calls),
            "route": await time_async(aroute, calls),
            "slot": await time_async(aslot, calls),
            "batch_size": await time_async(lambda: aio.batch_size("import"), calls),
        },
    }
    assert sync.select("api").fallback and (await aio.select("api")).fallback
    sync.close()
    await aio.close()
    worst = max(cell["mean_us"] for side in results.values() for cell in side.values())
    return {
        "benchmark": "sdk_fallback",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "calls": calls,
        "results": results,
        "worst_mean_us": worst,
        "target_us": 50,
        "meets_target": worst <= 50,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    print(json.dumps(asyncio.run(main(parser.parse_args().calls)), indent=2))
