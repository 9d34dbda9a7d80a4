"""A real ``loadwarden serve`` stays within a memory bound after 100,000 distinct client keys.

Client-supplied strings that the service keys state by, each one new:

* AcquireSlot ``request_id`` (idempotency map, LRU at ``limits.max_request_ids``) and
  ``client_key`` (rate-limit buckets, LRU at the pool's ``rate_limit_keys``): two per call;
  every call also selects a server, so pending decisions fill up to
  ``limits.max_pending_decisions`` and then evict;
* ReportBatch operation names (auto-registration, capped at ``limits.max_operations``,
  RESOURCE_EXHAUSTED past it): 1,000 per call;
* ReportOutcome decision ids that were never issued (answered, never stored): 1,000 per call.

The caps are small: the report calls fill max_operations, and the first
WARMUP_CALLS acquisitions fill every other map. The service's RSS is measured
there and after ACQUIRE_CALLS - WARMUP_CALLS more acquisitions (each adding two new
keys), and the growth in between must stay under RSS_GROWTH_BOUND_MB (see README
"Limits and caps" for the numbers).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest

from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..e2e._harness import Processes, Service

ACQUIRE_CALLS = 25_000  # x2 keys each = 50,000
REPORT_CALLS = 25  # x1,000 operation names = 25,000, and as many never-issued decision ids = 25,000
DISTINCT_KEYS = 2 * ACQUIRE_CALLS + 2 * REPORT_CALLS * 1_000
WARMUP_CALLS = 5_000  # 2.5 times every cap below
CONCURRENCY = 64
# Measured on the reference machine: under 1 MB of growth over the 20,000 calls
# after the caps were full (and under 0.5 MB over 70,000 in a longer run), +11 MB
# in all. Uncapped maps would add about 1 KB per call, 20 MB here; the bound also
# catches any one of them growing by 300 B or more per call.
RSS_GROWTH_BOUND_MB = 6.0
RSS_TOTAL_BOUND_MB = 60.0

CONFIG = """\
[service]
shutdown_grace_ms = 1000
auto_register_operations = true

[limits]
max_request_ids = 2000
max_pending_decisions = 2000
max_operations = 200

[monitor]
enabled = false

[pools.keys]
lease_ttl_ms = 100  # leases are reclaimed within ~0.2 s: nothing holds them
rate_limit = "1000/second"
rate_limit_keys = 2000
servers = [
  { id = "k1", address = "127.0.0.1:9001" },
  { id = "k2", address = "127.0.0.1:9002" },
]
"""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    procs = Processes(tmp_path)
    try:
        yield procs.serve(CONFIG, extra_args=["--log-level", "ERROR"])
    finally:
        procs.close()


def key(kind: str, i: int) -> str:
    return f"{kind}-{i:08d}-0123456789abcdef0123456789abcdef"  # 50 characters, like a UUID-based key


async def acquire_range(stub: pb_grpc.DecisionServiceAsyncStub, first: int, last: int) -> None:
    """AcquireSlot with a new request id and client key for each i in [first, last)."""
    queue = iter(range(first, last))

    async def worker() -> None:
        for i in queue:
            answer = await stub.AcquireSlot(
                pb.AcquireSlotRequest(
                    pool="keys",
                    request_id=key("request", i),
                    client_key=key("client", i),
                    select_server=True,
                    lease_ttl_ms=100,
                ),
                timeout=30,
            )
            assert answer.granted, answer

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def report_unknown_keys(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    cap_hit = 0
    for call in range(REPORT_CALLS):
        names = [key("operation", call * 1_000 + j) for j in range(1_000)]
        batches = [pb.BatchReport(operation=n, batch_size=10, duration_ms=5.0, success=True) for n in names]
        try:
            await stub.ReportBatch(pb.ReportBatchRequest(reports=batches), timeout=30)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limits.max_operations" in (err.details() or "")
            cap_hit += 1
        ids = [key("decision", call * 1_000 + j) for j in range(1_000)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ReportOutcome(
                pb.ReportOutcomeRequest(
                    outcomes=[pb.Outcome(decision_id=d, success=True, latency_ms=1.0) for d in ids]
                ),
                timeout=30,
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert cap_hit == REPORT_CALLS  # the first call filled max_operations; every call hit it


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 1e6


async def test_rss_stays_bounded_after_100k_distinct_client_keys(service: Service) -> None:
    assert DISTINCT_KEYS >= 100_000
    process = psutil.Process(service.proc.pid)
    channel = grpc.aio.insecure_channel(service.target)
    stub = pb_grpc.DecisionServiceStub(channel)
    try:
        start_mb = rss_mb(process)
        began = time.monotonic()
        await report_unknown_keys(stub)
        await acquire_range(stub, 0, WARMUP_CALLS)
        warm_mb = rss_mb(process)
        await acquire_range(stub, WARMUP_CALLS, ACQUIRE_CALLS)
        end_mb = rss_mb(process)
        status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest(), timeout=30)).status
        elapsed = time.monotonic() - began
    finally:
        await channel.close()
    print(
        f"\n{DISTINCT_KEYS} distinct keys in {elapsed:.1f} s: RSS {start_mb:.1f} MB at start, "
        f"{warm_mb:.1f} MB with the caps full, {end_mb:.1f} MB at the end "
        f"(+{end_mb - warm_mb:.1f} MB after the caps were full)"
    )
    assert service.proc.poll() is None
    assert end_mb - warm_mb < RSS_GROWTH_BOUND_MB, (start_mb, warm_mb, end_mb)
    assert end_mb - start_mb < RSS_TOTAL_BOUND_MB, (start_mb, warm_mb, end_mb)
    assert status.pending_decisions <= 2_000 and len(status.operations) == 200, status
    assert not re.search(r"Traceback|unexpected error", service.process.stderr.text), service.process.stderr.text
