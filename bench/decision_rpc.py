"""Decision RPC throughput against the ceiling of an empty grpc.aio handler.

One server process serves the real Decision service and, beside it on the same
port, an empty unary handler (bytes in, bytes out). This process drives, at 1, 8
and 64 calls in flight, each of:

  empty_raw    the empty handler through a raw channel (the ceiling)
  select_raw   SelectServer through the generated stub
  select_sdk   SelectServer through loadwarden.sdk.AsyncClient.select
  route_sdk    AsyncClient.route(): select on the caller's path, outcome batched off it

and prints JSON: calls/s, p50/p99 latency (ms) per mode and concurrency, and each
mode's throughput as a ratio of empty_raw measured in the same run.

Usage: python bench/decision_rpc.py [--seconds 4] [--rounds 4] [--concurrency 1,8,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import grpc

from loadwarden.sdk import AsyncClient
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

EMPTY_METHOD = "/loadwarden.bench.Empty/Call"

SERVER_CODE = """
import asyncio, grpc, sys
from loadwarden.server import PoolSettings, PoolSpec, ServerSpec, ServiceConfig, start_service

async def empty(request, context):
    return b""

async def main():
    pool = PoolSpec(PoolSettings(name="bench"), tuple(ServerSpec(f"s{i}", f"127.0.0.1:{9000 + i}") for i in range(3)))
    handler = grpc.method_handlers_generic_handler(
        "loadwarden.bench.Empty", {"Call": grpc.unary_unary_rpc_method_handler(empty)})
    # A short decision TTL keeps pending decisions (select_raw reports no outcomes) small.
    from loadwarden.server import CoreLimits
    config = ServiceConfig(listen="127.0.0.1:0", pools=(pool,), limits=CoreLimits(decision_ttl_ms=2000))
    running = await start_service(config, extra_handlers=[handler])
    print(running.target, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


class Cell:
    """Latencies and busy time of one (mode, concurrency) cell, summed over rounds."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.elapsed_s = 0.0

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        return {
            "calls_per_s": round(len(lat) / self.elapsed_s, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 3),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3),
            "calls": len(lat),
        }


async def drive(call: Callable[[], Awaitable[object]], concurrency: int, seconds: float, cell: Cell) -> None:
    """Runs ``concurrency`` loops of ``call`` for ``seconds``, adding to ``cell``."""
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while (start := time.perf_counter()) < deadline:
            await call()
            cell.latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cell.elapsed_s += time.perf_counter() - began


async def run(target: str, seconds: float, levels: list[int], rounds: int) -> dict[str, object]:
    channel = grpc.aio.insecure_channel(target)
    empty: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(EMPTY_METHOD)
    stub = pb_grpc.DecisionServiceStub(channel)
    select_request = pb.SelectServerRequest(pool="bench")
    client = AsyncClient(target, timeout_s=5.0)

    async def route() -> None:
        async with client.route("bench"):
            pass

    modes: dict[str, Callable[[], Awaitable[object]]] = {
        "empty_raw": lambda: empty(b"", timeout=5.0),
        "select_raw": lambda: stub.SelectServer(select_request, timeout=5.0),
        "select_sdk": lambda: client.select("bench"),
        "route_sdk": route,
    }
    for call in modes.values():  # warm up every path once
        await drive(call, 4, 0.3, Cell())
    cells = {name: {level: Cell() for level in levels} for name in modes}
    # Modes take turns in short slices, so machine noise and drift hit them alike.
    for _ in range(rounds):
        for level in levels:
            for name, call in modes.items():
                await drive(call, level, seconds / rounds, cells[name][level])
    results = {
        name: {str(level): cell.summary() for level, cell in by_level.items()} for name, by_level in cells.items()
    }
    await client.close()
    await channel.close()

    ratios = {
        name: {
            level: round(results[name][level]["calls_per_s"] / results["empty_raw"][level]["calls_per_s"], 3)
            for level in results[name]
        }
        for name in modes
        if name != "empty_raw"
    }
    return {
        "benchmark": "decision_rpc",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "seconds_per_cell": seconds,
        "rounds": rounds,
        "results": results,
        "throughput_ratio_vs_empty": ratios,
        "min_ratio": {name: min(r.values()) for name, r in ratios.items()},
        "geomean_ratio": {name: round(statistics.geometric_mean(r.values()), 3) for name, r in ratios.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each cell")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated calls in flight")
    parser.add_argument("--rounds", type=int, default=4, help="slices each cell is split into, interleaved")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    server = subprocess.Popen([sys.executable, "-c", SERVER_CODE], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        target = server.stdout.readline().strip()
        if not target:
            raise SystemExit("benchmark server did not start")
        report = asyncio.run(run(target, args.seconds, levels, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
