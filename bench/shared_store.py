"""The Redis store against the memory store, and two replicas against one, in one run.

Starts a real redis-server (the Debian package) and real ``loadwarden serve``
processes, then drives each setup closed-loop from this process with ``--clients``
concurrent grpc.aio callers for ``--seconds`` per measurement:

* ``select``: SelectServer calls per second, memory store vs Redis store (one
  replica each), and the Redis commands the service sent per SelectServer while
  they ran (Redis's own ``total_commands_processed``, less what the replica's
  background exchanges cost when idle: the request path should cost none);
* ``acquire_release``: AcquireSlot + ReleaseSlot cycles per second on a pool with
  room, memory vs Redis;
* ``two_replicas``: acquire/release cycles per second with the clients spread over
  two Redis replicas, against one replica;
* ``handoff``: a waiter queued on replica B for a slot held through replica A; the
  time from A's release call to B's grant reaching its caller, p50/p99 over
  ``--handoffs`` rounds.

Ratios are what to read: on a shared 2-core machine the absolute rates move by 2x
between runs, and the client, every replica and Redis compete for the same two
cores, so two replicas cannot show more throughput than one here — the number shows
what sharing costs, not what a second machine would add.

Usage: python bench/shared_store.py [--seconds 3] [--clients 16] [--handoffs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import redis

from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

if TYPE_CHECKING:  # mypy reads bench/ as the namespace package `bench`
    from bench._serve import start_service, stop_service
else:  # bench/ is on sys.path: the benchmarks run as scripts
    from _serve import start_service, stop_service

POOLS = """
[service]
shutdown_grace_ms = 500

[pools.open]
servers = [{ id = "s1", address = "127.0.0.1:9001" }, { id = "s2", address = "127.0.0.1:9002" }]

[pools.one]
max_concurrency = 1
max_wait_ms = 30000
servers = [{ id = "s1", address = "127.0.0.1:9001" }]
"""


def redis_config(url: str, prefix: str) -> str:
    return f'[state]\nstore = "redis"\nurl = "{url}"\nkey_prefix = "{prefix}"\n{POOLS}'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install the Debian package (./scripts/test does)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("redis-server did not start within 10 s") from None
            time.sleep(0.02)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


async def closed_loop(
    targets: list[str],
    clients: int,
    seconds: float,
    call: Callable[[pb_grpc.DecisionServiceAsyncStub], Awaitable[None]],
) -> float:
    """``call`` repeated by ``clients`` callers spread over ``targets`` for ``seconds``; calls per second."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [pb_grpc.DecisionServiceStub(c) for c in channels]
    for stub in stubs:  # connect and warm up before the clock starts
        await call(stub)
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call(stub)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(stubs[i % len(stubs)]) for i in range(clients)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return done / elapsed


async def select(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    await stub.SelectServer(pb.SelectServerRequest(pool="open"), timeout=10)


async def cycle(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    answer = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="open"), timeout=10)
    await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id), timeout=10)


def commands(client: redis.Redis) -> int:
    info: Any = client.info("stats")
    return int(info["total_commands_processed"])


async def redis_commands_per_select(target: str, client: redis.Redis, args: argparse.Namespace) -> dict[str, float]:
    idle_before = commands(client)
    await asyncio.sleep(args.seconds)
    idle_rate = (commands(client) - idle_before) / args.seconds  # sweeps, exchanges, resyncs
    before, started = commands(client), time.perf_counter()
    rate = await closed_loop([target], args.clients, args.seconds, select)
    elapsed = time.perf_counter() - started
    busy = commands(client) - before
    selects = rate * args.seconds
    per_select = max(0.0, busy - idle_rate * elapsed) / selects if selects else 0.0
    return {"redis_commands_per_select": round(per_select, 4), "background_commands_per_s": round(idle_rate, 1)}


async def handoffs(a: str, b: str, rounds: int) -> dict[str, float]:
    """A holds pool "one"'s only slot, a waiter queues on B; time from A's release to B's grant."""
    ca, cb = grpc.aio.insecure_channel(a), grpc.aio.insecure_channel(b)
    sa, sb = pb_grpc.DecisionServiceStub(ca), pb_grpc.DecisionServiceStub(cb)
    samples = []
    for _ in range(rounds):
        held = await sa.AcquireSlot(pb.AcquireSlotRequest(pool="one", max_wait_ms=10_000), timeout=15)
        waiter = asyncio.ensure_future(
            sb.AcquireSlot(pb.AcquireSlotRequest(pool="one", max_wait_ms=10_000), timeout=15)
        )
        while True:  # until B reports the waiter queued
            status = await sb.GetLoadStatus(pb.GetLoadStatusRequest(pool="one"), timeout=5)
            if status.status.pools[0].queue_length == 1:
                break
            await asyncio.sleep(0.001)
        released_at = time.perf_counter()
        await sa.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=held.lease.lease_id), timeout=5)
        granted = await waiter
        samples.append(time.perf_counter() - released_at)
        await sb.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=granted.lease.lease_id), timeout=5)
    await ca.close()
    await cb.close()
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000, 2)

    return {"rounds": rounds, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


async def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    redis_proc, url = start_redis(workdir)
    client = redis.Redis.from_url(url)
    started: list[subprocess.Popen[str]] = []

    def serve(config: str, name: str) -> str:
        directory = workdir / name
        directory.mkdir()
        proc, target = start_service(directory, config)
        started.append(proc)
        return target

    try:
        memory = serve(POOLS, "memory")
        shared_a = serve(redis_config(url, "{bench}:"), "redis-a")
        results: dict[str, Any] = {}
        select_memory = await closed_loop([memory], args.clients, args.seconds, select)
        select_redis = await closed_loop([shared_a], args.clients, args.seconds, select)
        results["select"] = {
            "memory_per_s": round(select_memory),
            "redis_per_s": round(select_redis),
            "ratio": round(select_redis / select_memory, 3),
            **await redis_commands_per_select(shared_a, client, args),
        }
        cycle_memory = await closed_loop([memory], args.clients, args.seconds, cycle)
        cycle_redis = await closed_loop([shared_a], args.clients, args.seconds, cycle)
        results["acquire_release"] = {
            "memory_per_s": round(cycle_memory),
            "redis_per_s": round(cycle_redis),
            "ratio": round(cycle_redis / cycle_memory, 3),
        }
        shared_b = serve(redis_config(url, "{bench}:"), "redis-b")
        one = await closed_loop([shared_a], args.clients, args.seconds, cycle)
        two = await closed_loop([shared_a, shared_b], args.clients, args.seconds, cycle)
        results["two_replicas"] = {"one_per_s": round(one), "two_per_s": round(two), "ratio": round(two / one, 3)}
        results["handoff"] = await handoffs(shared_a, shared_b, args.handoffs)
        return results
    finally:
        for proc in started:
            stop_service(proc)
        client.close()
        redis_proc.kill()
        redis_proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--handoffs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lw-shared-bench-") as tmp:
        results = asyncio.run(measure(args, Path(tmp)))
    report = {
        "benchmark": "shared_store",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": vars(args),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
