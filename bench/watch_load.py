"""WatchLoadStatus cost: SelectServer latency on a small pool with and without watch streams.

Starts ``loadwarden serve`` (the real command) with a pool ``small`` of 10 servers,
registers --servers servers in pool ``big`` (AdminService.ConfigurePool), and keeps
``big`` changing: a ReportLoad of one of its servers every 100 ms, for the whole
run, so every tick has a new snapshot to send. Then, in the same run:

  without   --selects SelectServer calls on ``small``, one at a time, no streams open
  with      --streams WatchLoadStatus streams on ``big`` at the minimum interval,
            opened from a separate process that reads raw bytes (so the client's
            parsing does not share the timing client's CPU), each having received
            its first snapshot; then the same SelectServer calls again

and prints JSON: p50/p99 µs of each phase, the p99 ratio (target: at most 2), and
how many snapshots and bytes the watchers received while the "with" phase ran.
Everything targets 127.0.0.1 and stops by itself.

Usage: python bench/watch_load.py [--servers 10000] [--streams 100] [--selects 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2, decision_pb2, decision_pb2_grpc

if TYPE_CHECKING:  # mypy reads bench/ as the namespace package `bench`
    from bench._serve import start_service, stop_service
else:  # bench/ is on sys.path: the benchmarks run as scripts
    from _serve import start_service, stop_service

SMALL_SERVERS = 10
CHANGE_EVERY_S = 0.1
MIN_INTERVAL_MS = 1_000  # the shortest interval the service serves (smaller requests are rounded up)
TARGET_RATIO = 2.0
WATCH_METHOD = "/loadwarden.v1.DecisionService/WatchLoadStatus"


def config_text(streams: int) -> str:
    servers = ",\n".join(f'  {{ id = "small-{i}", address = "127.0.0.1:{9000 + i}" }}' for i in range(SMALL_SERVERS))
    return f"""\
[service]
shutdown_grace_ms = 500

[limits]
max_watch_streams = {max(100, streams)}
max_watch_streams_per_caller = {max(20, streams)}

[pools.small]
servers = [
{servers},
]
"""


# --- the watchers process ------------------------------------------------------------


async def run_watchers(target: str, streams: int, interval_ms: int) -> None:
    """Opens ``streams`` raw-bytes streams on ``big``; prints "ready" once each has its first
    snapshot, then counts until stdin closes and prints the counts as JSON."""
    request = decision_pb2.WatchLoadStatusRequest(pool="big", interval_ms=interval_ms).SerializeToString()
    counts = {"snapshots": 0, "bytes": 0}
    first = asyncio.Event()
    got_first = 0
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 2**20)]) as ch:
        watch: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = ch.unary_stream(
            WATCH_METHOD, request_serializer=None, response_deserializer=None
        )

        async def one() -> None:
            nonlocal got_first
            call = watch(request)
            seen_first = False
            async for raw in call:
                counts["snapshots"] += 1
                counts["bytes"] += len(raw)
                if not seen_first:
                    seen_first = True
                    got_first += 1
                    if got_first == streams:
                        first.set()

        tasks = [asyncio.create_task(one()) for _ in range(streams)]
        await asyncio.wait_for(first.wait(), 120)
        print("ready", flush=True)
        counts["snapshots"] = counts["bytes"] = 0  # count only what arrives during the timed phase
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for task in tasks:
            task.cancel()
        print(json.dumps(counts), flush=True)


# --- the timing process ---------------------------------------------------------------


async def register_big(channel: grpc.aio.Channel, servers: int) -> None:
    specs = [
        common_pb2.ServerSpec(id=f"big-{i:05d}", address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:80")
        for i in range(servers)
    ]
    await admin_pb2_grpc.AdminServiceStub(channel).ConfigurePool(
        admin_pb2.ConfigurePoolRequest(pool=common_pb2.PoolConfig(name="big", servers=specs)), timeout=120
    )


async def keep_changing(channel: grpc.aio.Channel, servers: int, stop: asyncio.Event) -> None:
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    rng = random.Random(1)
    while not stop.is_set():
        report = common_pb2.LoadReport(
            pool="big", server_id=f"big-{rng.randrange(servers):05d}", cpu_percent=rng.uniform(0, 100)
        )
        await stub.ReportLoad(decision_pb2.ReportLoadRequest(reports=[report]), timeout=10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHANGE_EVERY_S)


async def time_selects(channel: grpc.aio.Channel, calls: int) -> dict[str, float]:
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    request = decision_pb2.SelectServerRequest(pool="small")
    samples, decisions = [], []
    for _ in range(calls):
        began = time.perf_counter()
        response = await stub.SelectServer(request, timeout=10)
        samples.append(time.perf_counter() - began)
        decisions.append(response.decision_id)
        if len(decisions) == 100:
            outcomes = [decision_pb2.Outcome(decision_id=d, success=True, latency_ms=1.0) for d in decisions]
            await stub.ReportOutcome(decision_pb2.ReportOutcomeRequest(outcomes=outcomes), timeout=10)
            decisions.clear()
    samples.sort()
    return {
        "calls": calls,
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
        "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6, 1),
    }


async def run(target: str, args: argparse.Namespace) -> dict[str, object]:
    async with grpc.aio.insecure_channel(target) as channel:
        await register_big(channel, args.servers)
        stop = asyncio.Event()
        changer = asyncio.create_task(keep_changing(channel, args.servers, stop))
        await time_selects(channel, min(200, args.selects))  # warm-up
        without = await time_selects(channel, args.selects)

        watchers = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--watchers",
                target,
                "--streams",
                str(args.streams),
                "--interval-ms",
                str(args.interval_ms),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert watchers.stdout is not None and watchers.stdin is not None
            ready = await asyncio.get_running_loop().run_in_executor(None, watchers.stdout.readline)
            if ready.strip() != "ready":
                raise SystemExit(f"the watchers did not start: {ready!r}")
            began = time.perf_counter()
            with_streams = await time_selects(channel, args.selects)
            elapsed = time.perf_counter() - began
            watchers.stdin.close()
            received = json.loads(await asyncio.get_running_loop().run_in_executor(None, watchers.stdout.readline))
            watchers.wait(30)
        finally:
            if watchers.poll() is None:
                watchers.kill()
                watchers.wait()
        stop.set()
        await changer
    ratio = with_streams["p99_us"] / without["p99_us"] if without["p99_us"] else None
    return {
        "benchmark": "watch_load",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "servers": args.servers,
        "streams": args.streams,
        "interval_ms": args.interval_ms,
        "change_every_ms": int(CHANGE_EVERY_S * 1000),
        "select_small_pool": {"without_streams": without, "with_streams": with_streams},
        "p99_ratio": round(ratio, 2) if ratio is not None else None,
        "target_ratio": TARGET_RATIO,
        "within_target": ratio is not None and ratio <= TARGET_RATIO,
        "watch_received": {
            "snapshots": received["snapshots"],
            "bytes": received["bytes"],
            "seconds": round(elapsed, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10_000, help="servers in pool big")
    parser.add_argument("--streams", type=int, default=100, help="WatchLoadStatus streams on pool big")
    parser.add_argument("--selects", type=int, default=3_000, help="timed SelectServer calls per phase")
    parser.add_argument("--interval-ms", type=int, default=MIN_INTERVAL_MS, help="the streams' interval_ms")
    parser.add_argument("--watchers", metavar="TARGET", help=argparse.SUPPRESS)  # the watchers process
    args = parser.parse_args()
    if args.watchers:
        asyncio.run(run_watchers(args.watchers, args.streams, args.interval_ms))
        return
    for name in ("servers", "streams", "selects"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    with tempfile.TemporaryDirectory(prefix="loadwarden-watch-") as tmp:
        proc, target = start_service(Path(tmp), config_text(args.streams))
        try:
            report = asyncio.run(run(target, args))
        finally:
            stop_service(proc)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
