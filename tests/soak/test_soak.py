"""A sustained mixed workload against a real ``loadwarden serve``: nothing fails, nothing grows.

For ``LOADWARDEN_SOAK_S`` seconds (default 60; CI runs the default, a developer
sets e.g. 1800) an AsyncClient drives, each at a fixed rate (open loop):

  route      route("api") with a few ms of work, 2 % marked failed (SelectServer + ReportOutcome)
  slot       slot("jobs", wait_s=1) holding 20-100 ms, random priority (AcquireSlot/ReleaseSlot, the queue)
  limited    acquire_slot/release_slot on a pool rate-limited to 5/s at 10/s: RESOURCE_EXHAUSTED is expected
  batch      batch_size + report_batch, threshold and latency-target operations
  status     load_status() (GetLoadStatus)
  + three BackendReporters pushing ReportLoad every second

while a thread samples the service's RSS and open file descriptors every second.
It asserts zero unexpected errors (every exception counted by kind; the rate
limit's RESOURCE_EXHAUSTED and a slot's queue timeout are expected), no SDK fallback answer
(the service is up throughout), RSS growth under 5 % (median of the last
samples against the median just after warm-up), a flat fd count, and no leaked
lease, queued request, in-flight selection or pending decision at the end. The
JSON summary of the run is printed (``pytest -s``) and attached to failures.

Run the long version with ``LOADWARDEN_SOAK_S=1800 .venv/bin/python -m pytest -s tests/soak/test_soak.py``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import random
import time

import pytest

from loadwarden.sdk import AsyncClient, BackendReporter

from ..e2e._harness import Processes
from ._workload import ProcessSampler, Tally, drive, median_fds, median_rss_mib, window

SOAK_S = float(os.environ.get("LOADWARDEN_SOAK_S", "60"))
# Warm-up: imports, caches, the allocator's first arenas and gRPC's buffers settle.
WARMUP_S = min(60.0, SOAK_S / 3)
# Length of the baseline window (right after warm-up) and of the final window, seconds.
WINDOW_S = min(30.0, SOAK_S / 6)
MAX_RSS_GROWTH = 0.05
# Open fds may differ by this many between samples (a reconnecting channel, an epoll fd).
FD_SLACK = 4
# Every SDK call's deadline. Generous: the soak looks for errors and growth, not latency
# (its percentiles are printed), and a shared 2-core host can stall a process for a second.
TIMEOUT_S = 5.0
# The BackendReporters' push interval (the default), seconds; a push's deadline is the same.
REPORT_INTERVAL_S = 1.0
SLACK_S = 1.0  # event-loop scheduling on a shared 2-core machine, on top of a call's deadline

pytestmark = [pytest.mark.e2e, pytest.mark.soak, pytest.mark.timeout(SOAK_S + 90)]

SERVERS = ("api-1", "api-2", "api-3")
# Default limits: a request id lives only as long as its lease or its wait, so nothing
# fills up over the run (it used to need max_request_ids = 500 to hide that the ids of
# ended leases were remembered until 200,000 of them had piled up).
CONFIG = """\
[service]
shutdown_grace_ms = 1000

[pools.api]
strategy = "p2c"
load_report_ttl_ms = 5000
servers = [
  { id = "api-1", address = "127.0.0.1:9001" },
  { id = "api-2", address = "127.0.0.1:9002" },
  { id = "api-3", address = "127.0.0.1:9003", weight = 2 },
]

[pools.jobs]
max_concurrency = 4
max_wait_ms = 2000
lease_ttl_ms = 5000

[pools.limited]
max_concurrency = 100
rate_limit = "5/second"
rate_burst = 5

[operations.import]
min_batch_size = 10
max_batch_size = 500
default_batch_size = 100
load_source = "pool"
pool = "api"

[operations.transcribe]
mode = "latency_target"
target_latency_ms = 50
max_batch_size = 64
"""


async def test_short_soak_has_no_errors_no_growth_and_no_leaked_leases(processes: Processes) -> None:
    service = processes.serve(CONFIG)
    sampler = ProcessSampler(service.proc.pid, interval_s=1.0).start()
    rng = random.Random(10)
    tally = Tally(
        expected_kinds={"limited": {"ResourceExhaustedError"}, "slot": {"SlotDenied:QUEUE_TIMEOUT"}},
        # The SDK's deadlines plus the block's own work and slot wait; the slack is event-loop scheduling.
        allowed_s={
            "route": TIMEOUT_S + SLACK_S,
            "slot": 2 * TIMEOUT_S + 1.0 + SLACK_S,
            "limited": 2 * TIMEOUT_S + SLACK_S,
            "batch": 2 * TIMEOUT_S + SLACK_S,
            "status": TIMEOUT_S + SLACK_S,
        },
    )
    client = AsyncClient(service.target, timeout_s=TIMEOUT_S)
    # Each reporter has its own client and channel, as each backend would.
    reporter_clients = [AsyncClient(service.target, timeout_s=TIMEOUT_S) for _ in SERVERS]
    reporters = [
        BackendReporter(c, "api", sid, interval_s=REPORT_INTERVAL_S)
        for c, sid in zip(reporter_clients, SERVERS, strict=True)
    ]
    for reporter in reporters:
        reporter.start()
    ends_at = time.monotonic() + SOAK_S

    def over() -> bool:
        return time.monotonic() >= ends_at

    async def route() -> bool:
        async with client.route("api") as routed:
            await asyncio.sleep(rng.uniform(0.001, 0.01))
            if rng.random() < 0.02:
                routed.fail("503")
        return routed.selection.fallback

    async def slot() -> bool:
        async with client.slot("jobs", wait_s=1.0, priority=rng.randint(0, 9)) as lease:
            await asyncio.sleep(rng.uniform(0.02, 0.1))
        return lease.fallback

    async def limited() -> bool:
        lease = await client.acquire_slot("limited", client_key="soak-client")
        await client.release_slot(lease.lease_id, latency_ms=1.0)
        return lease.fallback

    async def batch(operation: str) -> bool:
        size = await client.batch_size(operation)
        await client.report_batch(
            operation,
            batch_size=size.size,
            duration_ms=rng.uniform(10, 90),
            success=rng.random() > 0.01,
            decision_id=size.decision_id,
        )
        return size.source != "service"

    async def status() -> bool:
        await client.load_status()
        return False

    workload = {
        "route": (80.0, route),
        "slot": (40.0, slot),
        "limited": (10.0, limited),
        "batch": (15.0, lambda: batch(rng.choice(("import", "transcribe")))),
        "status": (2.0, status),
    }
    started = await asyncio.gather(
        *(drive(op, rate, over, functools.partial(tally.call, op, fn), tally) for op, (rate, fn) in workload.items())
    )
    for reporter in reporters:
        await reporter.stop_async()
    flushed = await client.flush_outcomes(timeout_s=10.0)
    outcomes = client.outcome_stats()
    async with AsyncClient(service.target, timeout_s=5.0) as checker:
        final = await checker.load_status()
    samples = sampler.stop()
    await client.close()
    for reporter_client in reporter_clients:
        await reporter_client.close()

    baseline = window(samples, WARMUP_S, WARMUP_S + WINDOW_S)
    end = window(samples, SOAK_S - WINDOW_S, SOAK_S + 1)
    after_warmup = window(samples, WARMUP_S, SOAK_S + 1)
    rss_base, rss_end = median_rss_mib(baseline), median_rss_mib(end)
    summary = {
        "soak_s": SOAK_S,
        "calls_started": dict(zip(workload, started, strict=True)),
        "target_rates_per_s": {op: rate for op, (rate, _) in workload.items()},
        **tally.summary(),
        "reporters": [
            {"pushed": r.stats().pushed, "failed": r.stats().failed, "last_error": repr(r.stats().last_error)}
            for r in reporters
        ],
        "outcomes": {
            "sent": outcomes.sent,
            "unknown": outcomes.unknown,
            "dropped": outcomes.dropped,
            "failed_batches": outcomes.failed_batches,
            "pending": outcomes.pending,
        },
        "rss_mib": {
            "baseline_median": rss_base,
            "end_median": rss_end,
            "growth_percent": round((rss_end - rss_base) / rss_base * 100, 2),
            "min": min(s.rss_mib for s in samples),
            "max": max(s.rss_mib for s in samples),
        },
        "fds": {
            "baseline_median": median_fds(baseline),
            "end_median": median_fds(end),
            "min_after_warmup": min(s.fds for s in after_warmup),
            "max_after_warmup": max(s.fds for s in after_warmup),
        },
        "service_cpu_s": samples[-1].cpu_s,
        "final_pools": {
            p.name: {"active_leases": p.active_leases, "queue_length": p.queue_length, "in_flight": p.in_flight}
            for p in final.pools
        },
        "final_pending_decisions": final.pending_decisions,
    }
    # One line per sample keeps the printed summary readable.
    rows = ",\n  ".join(json.dumps([s.t_s, s.rss_mib, s.fds, s.threads, s.cpu_s]) for s in samples)
    report = json.dumps(summary, indent=1)[:-2] + f',\n "samples": [\n  {rows}\n ]\n}}'
    print(f"soak summary (samples: t_s, rss_mib, fds, threads, cpu_s):\n{report}")

    assert service.proc.poll() is None, f"the service died\n{service.process.describe()}"
    assert not tally.unexpected, report
    assert not tally.fallback, f"the service was up, yet the SDK answered locally\n{report}"
    assert not tally.late, report
    # The workload really ran: every kind at least a quarter of its rate (the machine is shared).
    for op, (rate, _) in workload.items():
        assert tally.total(op) >= rate * SOAK_S / 4, f"{op}: only {tally.total(op)} calls\n{report}"
    assert tally.expected[("limited", "ResourceExhaustedError")] > 0, "the rate limit was never hit"
    assert tally.answered["limited"] > 0, report
    assert all(r.stats().failed == 0 and r.stats().pushed >= SOAK_S / REPORT_INTERVAL_S / 2 for r in reporters), report
    assert flushed and outcomes.dropped == outcomes.failed_batches == outcomes.unknown == 0, report

    assert len(baseline) >= 3 and len(end) >= 3, report
    assert rss_end <= rss_base * (1 + MAX_RSS_GROWTH), f"RSS grew {summary['rss_mib']}\n{report}"
    assert max(s.fds for s in after_warmup) <= median_fds(baseline) + FD_SLACK, report
    assert median_fds(end) <= median_fds(baseline) + FD_SLACK, report

    for pool in final.pools:
        assert (pool.active_leases, pool.queue_length, pool.in_flight) == (0, 0, 0), f"{pool.name}: leaked\n{report}"
    assert final.pending_decisions == 0, report
    stderr = service.process.stderr.text
    assert "reclaimed" not in stderr, f"a lease had to be reclaimed: one slot() did not release\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr[-3000:]
