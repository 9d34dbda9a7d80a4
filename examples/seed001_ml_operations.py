"""Seed 001's request queue, written against the loadwarden SDK: at most 3
concurrent ML operations, a request waits in the queue at most 30 s.

The seed's ``RequestQueue(max_concurrent=3).acquire_slot(timeout=30)`` lived in
one process; here the limit is a pool of the loadwarden service, so every worker
process (API, Celery) shares the same 3 slots. Each job holds its slot with
``async with client.slot("ml", wait_s=30, priority=...)``: the slot is renewed
while the job runs and released however the job ends. Waiting jobs are served
highest priority first, first come first served within a priority.

Run it against a local service (``./scripts/serve`` in another terminal):

    python examples/seed001_ml_operations.py [--target 127.0.0.1:50051] [--jobs 10] [--work-ms 1000]

It creates (or replaces) the pool through ``AdminService.ConfigurePool``; the same
pool in a service config file would be::

    [pools.ml]
    max_concurrency = 3     # MAX_CONCURRENT_ML_OPERATIONS
    max_wait_ms = 30000     # REQUEST_QUEUE_TIMEOUT

Then it starts all jobs at once, each with priority 0, 5 or 9 in turn, and
prints each job's queue wait and the most ML operations it saw running at once.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

import grpc

from loadwarden.sdk import AsyncClient, ResourceExhaustedError, SlotDenied
from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2

POOL = "ml"
MAX_CONCURRENT_ML_OPERATIONS = 3
QUEUE_TIMEOUT_S = 30.0
PRIORITIES = (0, 5, 9)


class Running:
    """ML operations running right now, as the jobs themselves see them."""

    def __init__(self) -> None:
        self.now = 0
        self.max = 0


@dataclass(frozen=True)
class JobResult:
    """How one job went. `denied` is set (and the waits are 0) when it never ran."""

    job: int
    priority: int
    waited_s: float = 0.0  # from asking to holding the slot, as the job saw it, seconds
    service_wait_s: float = 0.0  # the same wait as the service measured it, seconds
    denied: str = ""

    def __str__(self) -> str:
        head = f"job {self.job:>3} priority {self.priority}"
        if self.denied:
            return f"{head}: not run: {self.denied}"
        return f"{head}: waited {self.waited_s:.3f} s in the queue (service: {self.service_wait_s:.3f} s)"


async def ml_job(client: AsyncClient, job: int, priority: int, work_s: float, running: Running) -> JobResult:
    """One ML operation: waits for a slot, runs (simulated inference), releases."""
    asked = time.perf_counter()
    try:
        async with client.slot(POOL, wait_s=QUEUE_TIMEOUT_S, priority=priority) as lease:
            waited_s = time.perf_counter() - asked
            running.now += 1
            running.max = max(running.max, running.now)
            try:
                await asyncio.sleep(work_s)  # the model's work
            finally:
                running.now -= 1
    except (SlotDenied, ResourceExhaustedError) as answer:
        return JobResult(job, priority, denied=str(answer))
    return JobResult(job, priority, waited_s, lease.queue_wait_s)


def configure_pool(target: str) -> None:
    """Creates or replaces the `ml` pool through AdminService.ConfigurePool."""
    pool = common_pb2.PoolConfig(
        name=POOL, max_concurrency=MAX_CONCURRENT_ML_OPERATIONS, max_wait_ms=int(QUEUE_TIMEOUT_S * 1000)
    )
    with grpc.insecure_channel(target) as channel:
        admin_pb2_grpc.AdminServiceStub(channel).ConfigurePool(admin_pb2.ConfigurePoolRequest(pool=pool), timeout=5)


async def run(target: str, jobs: int, work_s: float) -> None:
    running = Running()
    async with AsyncClient(target, timeout_s=5.0) as client:
        began = time.perf_counter()
        results = await asyncio.gather(
            *(ml_job(client, job, PRIORITIES[job % len(PRIORITIES)], work_s, running) for job in range(jobs))
        )
        elapsed_s = time.perf_counter() - began
        status = (await client.load_status(POOL)).pools[0]
    for result in results:
        print(result)
    completed = [r for r in results if not r.denied]
    print(f"completed: {len(completed)} of {jobs} in {elapsed_s:.2f} s")
    print(f"max concurrent ML operations: {running.max} (limit {MAX_CONCURRENT_ML_OPERATIONS})")
    for priority in PRIORITIES:
        waits = [r.waited_s for r in completed if r.priority == priority]
        if waits:
            print(f"priority {priority}: queue wait median {statistics.median(waits):.3f} s, max {max(waits):.3f} s")
    print(f"active leases after: {status.active_leases}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="loadwarden service address")
    parser.add_argument("--jobs", type=int, default=10, help="ML jobs started at once, count")
    parser.add_argument("--work-ms", type=float, default=1000.0, help="simulated work per job, milliseconds")
    args = parser.parse_args()
    configure_pool(args.target)
    print(
        f"pool {POOL!r}: at most {MAX_CONCURRENT_ML_OPERATIONS} concurrent ML operations, "
        f"{QUEUE_TIMEOUT_S:g} s queue timeout"
    )
    asyncio.run(run(args.target, args.jobs, args.work_ms / 1000.0))


if __name__ == "__main__":
    main()
