"""Service memory at scale: RSS of a real ``loadwarden serve`` with 10,000 servers and 100,000 leases.

Starts ``loadwarden serve`` (the real command, in-memory state) with a pool
``small`` of 10 servers and a pool ``leases`` able to hold every lease, then:

  servers   AdminService.ConfigurePool registers --servers servers (ids srv-00000...,
            weight 1) over --pools pools big-0..., one call per pool
  churn     (--churn N, default 0) N AcquireSlot + ReleaseSlot pairs in pool ``leases``
            first: a service that has run a while remembers up to [limits]
            max_request_ids request ids and as many ended lease ids
  leases    AcquireSlot takes --leases leases in pool ``leases`` with a one-hour TTL,
            --concurrency calls in flight, each with a fresh request id (as the SDK
            sends), so the idempotency map is as full as in real use
  select    SelectServer, one call at a time, alternating rounds on ``small`` (10
            servers) and ``big-0`` (--servers / --pools servers); each round's
            outcomes are reported afterwards (untimed), so no decision stays pending

and prints JSON: the service's RSS in MB (10^6 bytes, the target's unit) at
start, after the servers, after the churn, after the leases and after the
selections, its peak RSS (the kernel's VmHWM where there is one, else the
highest 20 ms sample), the time to fill, µs per SelectServer round trip at each
pool size, and what GetLoadStatus counts at the end. The target is under 200 MB
at 10,000 servers and 100,000 leases.

Usage: python bench/memory.py [--servers 10000] [--pools 1] [--leases 100000]
                              [--churn 0] [--selects 2000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import psutil

from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2, decision_pb2, decision_pb2_grpc

if TYPE_CHECKING:  # mypy reads bench/ as the namespace package `bench`
    from bench._serve import start_service, stop_service
else:  # bench/ is on sys.path: the benchmarks run as scripts
    from _serve import start_service, stop_service

TARGET_MB = 200.0
LEASE_TTL_MS = 3_600_000
SMALL_SERVERS = 10
SELECT_ROUND = 100  # SelectServer calls per round; rounds alternate between the two pools
SETTLE_S = 1.0  # lets the service finish start-up work (monitor, first sweeps) before the baseline
MIB = 2**20
MB = 10**6  # the unit of every RSS figure printed
# GetLoadStatus of a pool of many servers is larger than gRPC's default 4 MiB receive limit.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * MIB), ("grpc.max_send_message_length", 256 * MIB)]


def config_text(leases: int) -> str:
    cap = max(200_000, leases)  # the defaults, unless more leases are asked for
    servers = ",\n".join(f'  {{ id = "small-{i}", address = "127.0.0.1:{9000 + i}" }}' for i in range(SMALL_SERVERS))
    return f"""\
[service]
shutdown_grace_ms = 1000

[limits]
max_leases = {cap}
max_request_ids = {cap}

[pools.small]
servers = [
{servers},
]

[pools.leases]
max_concurrency = {max(1, leases)}
lease_ttl_ms = {LEASE_TTL_MS}
"""


class RssWatch:
    """Samples a process's RSS every 20 ms on a thread, keeping the highest value."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss_mb(self) -> float:
        rss = self._process.memory_info().rss
        self.peak_bytes = max(self.peak_bytes, rss)
        return round(rss / MB, 1)

    def peak_mb(self) -> tuple[float, str]:
        """The peak RSS and where it comes from: the kernel's high-water mark, or the samples."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
            if match:
                return round(max(int(match.group(1)) * 1024, self.peak_bytes) / MB, 1), "VmHWM"
        except OSError:
            pass
        return round(self.peak_bytes / MB, 1), "sampled every 20 ms"

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.rss_mb()
            except psutil.NoSuchProcess:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def server_specs(first: int, count: int) -> list[common_pb2.ServerSpec]:
    return [
        common_pb2.ServerSpec(id=f"srv-{i:05d}", address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:8080")
        for i in range(first, first + count)
    ]


async def register_servers(channel: grpc.aio.Channel, servers: int, pools: int) -> list[str]:
    """Registers ``servers`` servers over ``pools`` pools; returns the pool names."""
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    names, first = [], 0
    for p in range(pools):
        count = servers // pools + (1 if p < servers % pools else 0)
        name = f"big-{p}"
        pool = common_pb2.PoolConfig(name=name, servers=server_specs(first, count))
        await admin.ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=pool), timeout=120.0)
        names.append(name)
        first += count
    return names


async def acquire_leases(channel: grpc.aio.Channel, leases: int, concurrency: int) -> int:
    """Takes ``leases`` leases in pool ``leases``; returns how many were granted."""
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    remaining = leases
    granted = 0

    async def worker() -> None:
        nonlocal remaining, granted
        while remaining > 0:
            remaining -= 1
            request = decision_pb2.AcquireSlotRequest(
                pool="leases", request_id=uuid.uuid4().hex, lease_ttl_ms=LEASE_TTL_MS
            )
            response = await stub.AcquireSlot(request, timeout=30.0)
            granted += response.granted

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, leases)))))
    return granted


async def churn_leases(channel: grpc.aio.Channel, pairs: int, concurrency: int) -> int:
    """Acquires and releases ``pairs`` leases in pool ``leases``; returns how many were released."""
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    remaining = pairs
    released = 0

    async def worker() -> None:
        nonlocal remaining, released
        while remaining > 0:
            remaining -= 1
            granted = await stub.AcquireSlot(
                decision_pb2.AcquireSlotRequest(pool="leases", request_id=uuid.uuid4().hex), timeout=30.0
            )
            response = await stub.ReleaseSlot(
                decision_pb2.ReleaseSlotRequest(
                    lease_id=granted.lease.lease_id, request_id=uuid.uuid4().hex, success=True, latency_ms=1.0
                ),
                timeout=30.0,
            )
            released += response.released

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, pairs)))))
    return released


async def time_selects(channel: grpc.aio.Channel, pools: dict[str, str], selects: int) -> dict[str, dict[str, float]]:
    """µs per SelectServer round trip by pool label, rounds alternating between the pools."""
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    samples: dict[str, list[float]] = {label: [] for label in pools}
    for pool in pools.values():  # warm up both paths
        warmup = [await stub.SelectServer(decision_pb2.SelectServerRequest(pool=pool), timeout=10.0) for _ in range(10)]
        outcomes = [decision_pb2.Outcome(decision_id=r.decision_id, success=True, latency_ms=1.0) for r in warmup]
        await stub.ReportOutcome(decision_pb2.ReportOutcomeRequest(outcomes=outcomes), timeout=10.0)
    done = 0
    while done < selects:
        n = min(SELECT_ROUND, selects - done)
        for label, pool in pools.items():
            request = decision_pb2.SelectServerRequest(pool=pool)
            decisions = []
            for _ in range(n):
                began = time.perf_counter()
                response = await stub.SelectServer(request, timeout=10.0)
                samples[label].append(time.perf_counter() - began)
                decisions.append(response.decision_id)
            outcomes = [decision_pb2.Outcome(decision_id=d, success=True, latency_ms=1.0) for d in decisions]
            await stub.ReportOutcome(decision_pb2.ReportOutcomeRequest(outcomes=outcomes), timeout=10.0)
        done += n
    result = {}
    for label, values in samples.items():
        values.sort()
        result[label] = {
            "mean_us": round(statistics.fmean(values) * 1e6, 1),
            "p50_us": round(values[len(values) // 2] * 1e6, 1),
            "p99_us": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1e6, 1),
            "calls": len(values),
        }
    return result


async def run(target: str, watch: RssWatch, args: argparse.Namespace) -> dict[str, object]:
    rss: dict[str, float] = {}
    fill: dict[str, float] = {}
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await asyncio.sleep(SETTLE_S)  # start-up work settles before the baseline
        rss["start"] = watch.rss_mb()

        began = time.perf_counter()
        names = await register_servers(channel, args.servers, args.pools)
        fill["servers_s"] = round(time.perf_counter() - began, 2)
        rss["after_servers"] = watch.rss_mb()

        began = time.perf_counter()
        churned = await churn_leases(channel, args.churn, args.concurrency) if args.churn else 0
        fill["churn_s"] = round(time.perf_counter() - began, 2)
        rss["after_churn"] = watch.rss_mb()

        began = time.perf_counter()
        granted = await acquire_leases(channel, args.leases, args.concurrency)
        fill["leases_s"] = round(time.perf_counter() - began, 2)
        rss["after_leases"] = watch.rss_mb()

        big = names[0]
        big_size = args.servers // args.pools + (1 if args.servers % args.pools else 0)
        selects = await time_selects(channel, {str(SMALL_SERVERS): "small", str(big_size): big}, args.selects)
        rss["after_selects"] = watch.rss_mb()

        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        # GetLoadStatus pages (10,000 servers a page); a pool split over pages comes back whole.
        pools: dict[str, Any] = {}
        token = ""
        while True:
            page = await stub.GetLoadStatus(decision_pb2.GetLoadStatusRequest(page_token=token), timeout=60.0)
            status = page.status
            for pool in status.pools:
                if pool.name in pools:
                    pools[pool.name].servers.extend(pool.servers)
                else:
                    pools[pool.name] = pool
            token = page.next_page_token
            if not token:
                break
    peak, peak_source = watch.peak_mb()
    rss["peak"] = peak
    return {
        "benchmark": "memory",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "servers": args.servers,
        "pools": args.pools,
        "leases": args.leases,
        "churn": args.churn,
        "rss_mb": rss,
        "peak_source": peak_source,
        "fill_s": fill,
        "leases_per_s": round(args.leases / fill["leases_s"], 1) if fill["leases_s"] else None,
        "select_us": selects,
        "service_counts": {
            "servers_registered": sum(len(pools[n].servers) for n in names),
            "leases_churned": churned,
            "leases_granted": granted,
            "active_leases": pools["leases"].active_leases,
            "pending_decisions": status.pending_decisions,
        },
        "target_mb": TARGET_MB,
        "under_target": peak < TARGET_MB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=10_000, help="servers to register, in total")
    parser.add_argument("--pools", type=int, default=1, help="pools the servers are spread over")
    parser.add_argument("--leases", type=int, default=100_000, help="leases to hold")
    parser.add_argument(
        "--churn",
        type=int,
        default=0,
        help="leases acquired and released before the held ones (fills the request-id memory)",
    )
    parser.add_argument("--selects", type=int, default=2_000, help="timed SelectServer calls per pool size")
    parser.add_argument("--concurrency", type=int, default=64, help="AcquireSlot calls in flight while filling")
    args = parser.parse_args()
    for name in ("servers", "pools", "leases", "selects", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.churn < 0:
        parser.error("--churn must be >= 0")
    if args.pools > args.servers:
        parser.error("--pools must be <= --servers")
    with tempfile.TemporaryDirectory(prefix="loadwarden-memory-") as tmp:
        proc, target = start_service(Path(tmp), config_text(args.leases))
        watch = RssWatch(proc.pid)
        try:
            report = asyncio.run(run(target, watch, args))
        finally:
            watch.stop()
            stop_service(proc)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
