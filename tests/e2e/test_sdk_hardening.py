"""100 SDK clients with a 20 ms deadline against a real, overloaded `loadwarden serve`.

Every client runs several workers that enter `slot()` on a 10-slot pool with the
"local_limit" fallback: half ask with no wait (a 20 ms call deadline), half wait in
the pool's queue under a caller `deadline(0.02)` scope, so the SDK gives up on
grants the service makes later. 300 workers on one event loop and a service on a
2-core machine are slow enough that calls, releases and renewals miss 20 ms deadlines.

Proves: the number of blocks running at once never exceeds the README's worst case
(N - 1) * L + max(C, L); the service's own cap holds; and once the clients are closed
no lease is left on the service (well before any lease TTL could explain it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import pytest

from loadwarden.sdk import AsyncClient, LeaseLostError, LoadwardenError, SlotDenied, deadline
from loadwarden.sdk._async.leases import AsyncReleaseRetries

from ._harness import Processes

pytestmark = pytest.mark.e2e

CLIENTS = 100  # N
WORKERS_PER_CLIENT = 3
POOL_CAP = 10  # C
LOCAL_LIMIT = 2  # L
WORST_CASE = (CLIENTS - 1) * LOCAL_LIMIT + max(POOL_CAP, LOCAL_LIMIT)
DEADLINE_S = 0.02
LOAD_S = 6.0  # at least; longer (up to MAX_LOAD_S) until both the service and the fallback granted
MAX_LOAD_S = 30.0
LEASE_TTL_S = 120.0  # no lease may be reclaimed by expiry during the test
NO_LEASE_LEFT_WITHIN_S = 15.0

CONFIG = f"""
[service]
shutdown_grace_ms = 200

[pools.jobs]
max_concurrency = {POOL_CAP}
max_wait_ms = 2000
lease_ttl_ms = {int(LEASE_TTL_S * 1000)}
"""


class Gauge:
    """Blocks running now and the most seen at once, by kind."""

    def __init__(self) -> None:
        self.now = {"service": 0, "fallback": 0}
        self.peak_total = 0
        self.peak = {"service": 0, "fallback": 0}

    @contextlib.contextmanager
    def running(self, kind: str):
        self.now[kind] += 1
        self.peak[kind] = max(self.peak[kind], self.now[kind])
        self.peak_total = max(self.peak_total, sum(self.now.values()))
        try:
            yield
        finally:
            self.now[kind] -= 1


def release_retries(client: AsyncClient) -> AsyncReleaseRetries:
    """The client's background release retrier, with its counters."""
    retrier = client._releases
    assert isinstance(retrier, AsyncReleaseRetries)
    return retrier


async def run_load(processes: Processes) -> tuple[dict, AsyncClient, Any]:
    """Runs the load; returns its summary, an open observer client and the service."""
    service = processes.serve(CONFIG)
    observer = AsyncClient(service.target, timeout_s=2.0)
    clients = [
        AsyncClient(service.target, timeout_s=DEADLINE_S, slot_fallback="local_limit", local_slot_limit=LOCAL_LIMIT)
        for _ in range(CLIENTS)
    ]
    gauge = Gauge()
    counts = {"service": 0, "fallback": 0, "denied": 0, "lost": 0, "exhausted": 0}
    unexpected: list[BaseException] = []
    service_peak = 0
    # Every channel connected first: 100 handshakes on one loop would spend the first calls'
    # 20 ms, open every breaker and leave only the fallback to test on a loaded machine.
    await asyncio.gather(*(client.load_status("jobs", timeout_s=10.0) for client in clients))
    started = time.monotonic()

    def running() -> bool:
        took_s = time.monotonic() - started
        both = counts["service"] > 0 and counts["fallback"] > 0
        return took_s < LOAD_S or (not both and took_s < MAX_LOAD_S)

    async def worker(client: AsyncClient, rng: random.Random) -> None:
        while running():
            queued = rng.random() < 0.5
            try:
                with deadline(DEADLINE_S) if queued else contextlib.nullcontext():
                    async with client.slot("jobs", wait_s=0.5 if queued else 0.0) as lease:
                        kind = "fallback" if lease.fallback else "service"
                        counts[kind] += 1
                        with gauge.running(kind):
                            await asyncio.sleep(rng.uniform(0.002, 0.02))  # the application's work
            except SlotDenied:
                counts["denied"] += 1
                await asyncio.sleep(rng.uniform(0.001, 0.01))
            except LeaseLostError:
                counts["lost"] += 1
            except LoadwardenError as err:
                if err.code.name == "RESOURCE_EXHAUSTED":
                    counts["exhausted"] += 1
                else:
                    unexpected.append(err)

    async def watch_service() -> None:
        nonlocal service_peak
        while running():
            with contextlib.suppress(LoadwardenError):
                status = await observer.load_status("jobs")
                service_peak = max(service_peak, status.pools[0].active_leases)
            await asyncio.sleep(0.05)

    try:
        rngs = [random.Random(i) for i in range(CLIENTS * WORKERS_PER_CLIENT)]
        await asyncio.gather(
            watch_service(),
            *(worker(clients[i // WORKERS_PER_CLIENT], rngs[i]) for i in range(CLIENTS * WORKERS_PER_CLIENT)),
        )
    finally:
        await asyncio.gather(*(client.close() for client in clients))

    retriers = [release_retries(c) for c in clients]
    releases = {
        "retried": sum(r.retried for r in retriers),
        "released_late": sum(r.released for r in retriers),
        "given_up": sum(r.given_up for r in retriers),
        "abandons_given_up": sum(r.abandons_given_up for r in retriers),  # the no-lease-behind test checks these
        "dropped": sum(r.dropped for r in retriers),
        "abandoned": sum(r.abandoned for r in retriers),
        "left": sum(r.pending() + r.in_flight for r in retriers),
    }
    summary = {
        **counts,
        "releases": releases,
        "peak": gauge.peak,
        "peak_total": gauge.peak_total,
        "service_peak": service_peak,
        "worst_case": WORST_CASE,
    }
    print(summary)
    assert not unexpected, (unexpected[:5], summary)
    return summary, observer, service


async def test_100_clients_with_a_20ms_deadline_never_exceed_the_worst_case_and_release_all_they_saw(
    processes: Processes,
) -> None:
    summary, observer, _ = await run_load(processes)
    await observer.close()

    assert summary["service"] > 0 and summary["fallback"] > 0, summary  # both paths were exercised
    assert summary["peak_total"] <= WORST_CASE, summary
    assert summary["peak"]["service"] <= POOL_CAP and summary["service_peak"] <= POOL_CAP, summary
    releases = summary["releases"]
    assert releases["given_up"] == releases["dropped"] == releases["left"] == 0, summary


async def test_100_clients_with_a_20ms_deadline_leave_no_lease_behind(processes: Processes) -> None:
    _summary, observer, service = await run_load(processes)
    deadline_at = time.monotonic() + NO_LEASE_LEFT_WITHIN_S
    while True:
        status = (await observer.load_status("jobs")).pools[0]
        if status.active_leases == 0 and status.queue_length == 0:
            break
        assert time.monotonic() < deadline_at, (
            f"{status.active_leases} leases / {status.queue_length} queued left {NO_LEASE_LEFT_WITHIN_S} s "
            f"after the clients closed (lease TTL {LEASE_TTL_S} s)\n{service.process.stderr.text[-3000:]}"
        )
        await asyncio.sleep(0.05)
    await observer.close()
