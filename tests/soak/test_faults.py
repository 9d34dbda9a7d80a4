"""Faults under load against real processes, each bounded in time.

* The service is SIGKILLed while an AsyncClient drives route(), slot(),
  batch_size() and report_batch() at fixed rates: the SDK's local fallbacks answer
  every call that has one, no call outlives its deadline, the breakers open; after
  a restart on the same port the breakers close and the service answers again.
* Client processes holding renewed leases are SIGKILLed: the leases, alive past
  many TTLs while their holders lived, lapse one TTL after the kill with no other
  call to the service, and another client can take every slot.
* A real backend (its own process: a grpc.aio server with a BackendReporter) is
  SIGKILLed while route() traffic calls it: its failures eject it, or, with
  ejection off, its stopped load reports make it stale; either way the service
  stops selecting it while the other backends keep taking traffic.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadwarden.sdk import (
    AsyncClient,
    BackendReporter,
    BreakerConfig,
    BreakerEvent,
    BreakerState,
    Client,
    RetryConfig,
    ServerState,
    SlotDenied,
)
from loadwarden.v1 import admin_pb2, admin_pb2_grpc, common_pb2

from ..e2e._harness import Proc, Processes, Service
from ._workload import Tally, drive, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

HERE = Path(__file__).resolve().parent
BACKEND_SCRIPT = HERE / "_backend.py"
HOLDER_SCRIPT = HERE / "_holder.py"
BACKEND_METHOD = "/loadwarden.soak.Backend/Work"
_BACKEND_LISTENING = re.compile(r"^backend (\S+) listening on (\S+)$", re.MULTILINE)
# Event-loop scheduling on a shared 2-core machine, on top of the SDK's deadline; a hung
# call (e.g. a TCP connect to a dead host) would take many times longer.
SLACK_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- (a) the service dies mid-load and comes back -------------------------------------------

SERVICE_CONFIG = """\
[service]
shutdown_grace_ms = 200

[pools.api]
servers = [
  { id = "a", address = "127.0.0.1:9001" },
  { id = "b", address = "127.0.0.1:9002" },
  { id = "c", address = "127.0.0.1:9003" },
]

[pools.jobs]
max_concurrency = 20
lease_ttl_ms = 5000

[operations.import]
min_batch_size = 10
max_batch_size = 200
default_batch_size = 50
"""
CALL_TIMEOUT_S = 0.3
WORK_S = 0.005  # the application's own work inside route() and slot() blocks
GUARDED = ("SelectServer", "AcquireSlot", "GetBatchSize")  # methods with a local answer
BREAKERS = (*GUARDED, "ReportBatch")
WITH_FALLBACK = ("route", "slot", "batch_size")
# What report_batch (no local answer) may raise while the service is down or its breaker open.
OUTAGE_ERRORS = {"UnavailableError", "DeadlineExceededError", "BreakerOpenError"}


async def test_sdk_fallbacks_absorb_a_sigkilled_service_and_recover_after_restart(processes: Processes) -> None:
    target = f"127.0.0.1:{free_port()}"
    service = processes.serve(SERVICE_CONFIG, listen=target)
    client = AsyncClient(
        target,
        timeout_s=CALL_TIMEOUT_S,
        breaker=BreakerConfig(
            window_size=10,
            minimum_calls=5,
            consecutive_failures=3,
            open_wait_s=0.3,
            max_open_wait_s=1.0,
            half_open_probes=2,
        ),
        retry=RetryConfig(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05),
        slot_fallback="local_limit",
        local_slot_limit=8,
    )
    events: list[BreakerEvent] = []
    for method in BREAKERS:
        breaker = client.breaker(method)
        assert breaker is not None
        breaker.add_listener(events.append)
    reporter_client = AsyncClient(target, timeout_s=CALL_TIMEOUT_S)
    reporter = BackendReporter(reporter_client, "api", "a", interval_s=0.2)
    reporter.start()

    tally = Tally(
        expected_kinds={"slot": {"SlotDenied:LOCAL_LIMIT"}, "report_batch": OUTAGE_ERRORS},
        allowed_s={
            "route": CALL_TIMEOUT_S + WORK_S + SLACK_S,
            "slot": 2 * CALL_TIMEOUT_S + WORK_S + SLACK_S,
            "batch_size": CALL_TIMEOUT_S + SLACK_S,
            "report_batch": CALL_TIMEOUT_S + SLACK_S,
        },
    )
    answers: list[tuple[float, str, bool]] = []  # (started at, operation, answered locally)
    report_errors: list[float] = []  # when report_batch calls that failed had started
    stop = False

    def recorded(op: str, fn: Callable[[], Awaitable[bool]]) -> Callable[[], Coroutine[Any, Any, None]]:
        async def call() -> None:
            began = time.monotonic()
            local = await tally.call(op, fn)
            if local is not None:
                answers.append((began, op, local))
            elif op == "report_batch":
                report_errors.append(began)

        return call

    async def route() -> bool:
        async with client.route("api") as routed:
            await asyncio.sleep(WORK_S)
        return routed.selection.fallback

    async def slot() -> bool:
        async with client.slot("jobs") as lease:
            await asyncio.sleep(WORK_S)
        return lease.fallback

    async def batch_size() -> bool:
        return (await client.batch_size("import", default=50)).source != "service"

    async def report_batch() -> bool:
        await client.report_batch("import", batch_size=10, duration_ms=5.0)
        return False

    rates = {
        "route": (50.0, route),
        "slot": (30.0, slot),
        "batch_size": (10.0, batch_size),
        "report_batch": (5.0, report_batch),
    }
    drivers = asyncio.gather(
        *(drive(op, rate, lambda: stop, recorded(op, fn), tally) for op, (rate, fn) in rates.items())
    )

    def answered(op: str, since: float, *, local: bool) -> int:
        return sum(1 for t, o, fb in answers if o == op and t >= since and fb is local)

    def each_op(since: float, n: int, *, local: bool) -> bool:
        return all(answered(op, since, local=local) >= n for op in WITH_FALLBACK)

    try:
        began = time.monotonic()
        await wait_until(lambda: each_op(began, 20, local=False), 30, "answers from the service before the kill")
        killed_at = time.monotonic()
        service.process.kill()  # SIGKILL: no drain, connections drop
        await wait_until(
            lambda: all(
                any(e.name.startswith(f"{m}@") and e.current is BreakerState.OPEN for e in events) for m in GUARDED
            ),
            15,
            "every breaker opens",
        )
        await wait_until(lambda: each_op(killed_at, 20, local=True), 20, "local answers while the service is down")
        pushed_before_restart = reporter.stats().pushed
        await asyncio.to_thread(processes.serve, SERVICE_CONFIG, listen=target)  # the loop keeps driving meanwhile
        restarted_at = time.monotonic()

        def closed(method: str) -> bool:
            breaker = client.breaker(method)
            assert breaker is not None, f"{method} has no breaker"
            return breaker.state is BreakerState.CLOSED

        def recovered() -> bool:
            return all(closed(m) for m in BREAKERS) and each_op(restarted_at, 1, local=False)

        recovery_s = await wait_until(recovered, 20, "breakers close and the service answers again")
        recovered_at = time.monotonic()
        await wait_until(lambda: each_op(recovered_at, 30, local=False), 30, "answers from the restarted service")
        await wait_until(
            lambda: reporter.stats().pushed > pushed_before_restart,
            10,
            "the backend's load reports reach the restarted service",
        )
    finally:
        stop = True
        await drivers
        await reporter.stop_async()
        await client.close()
        await reporter_client.close()

    # A call in flight when the service died may have started up to its deadline before.
    outage_from = killed_at - CALL_TIMEOUT_S - SLACK_S
    summary = {"down_s": round(restarted_at - killed_at, 2), "recovery_s": round(recovery_s, 2), **tally.summary()}
    print(f"service kill summary: {json.dumps(summary)}")
    assert not tally.unexpected, summary
    assert not tally.late, summary  # no caller waited past its deadline
    for op in WITH_FALLBACK:
        assert tally.fallback[op] > 0, f"{op}: no local answer while the service was down\n{summary}"
        assert answered(op, 0, local=True) == answered(op, outage_from, local=True), f"{op}: local before the kill"
    # The service answers every call again once its breakers have closed.
    last = {op: [fb for t, o, fb in answers if o == op and t >= recovered_at] for op in WITH_FALLBACK}
    assert all(len(v) >= 30 and not any(v[-30:]) for v in last.values()), (last, summary)
    assert all(outage_from <= t <= recovered_at for t in report_errors), "report_batch failed while the service was up"
    assert report_errors, "report_batch (no local answer) never failed: was the service really down?"
    for method in GUARDED:
        mine = [e for e in events if e.name.startswith(f"{method}@")]
        assert any(e.current is BreakerState.OPEN for e in mine), (method, mine)
        assert any(e.previous is BreakerState.HALF_OPEN and e.current is BreakerState.CLOSED for e in mine), mine


# --- (b) clients holding leases die ------------------------------------------------------

LEASE_POOL = "jobs"
HOLDERS = 2
SLOTS_EACH = 3
CAPACITY = HOLDERS * SLOTS_EACH
# The holders renew at 75 % of it: 0.5 s of margin for a starved holder process.
LEASE_TTL_S = 2.0
LEASE_CONFIG = f"""\
[service]
shutdown_grace_ms = 500

[pools.{LEASE_POOL}]
max_concurrency = {CAPACITY}
lease_ttl_ms = 30000
"""


def test_leases_of_sigkilled_clients_are_reclaimed_after_their_ttl(processes: Processes) -> None:
    service = processes.serve(LEASE_CONFIG)
    holders = [
        processes.spawn([sys.executable, HOLDER_SCRIPT, service.target, LEASE_POOL, str(SLOTS_EACH), str(LEASE_TTL_S)])
        for _ in range(HOLDERS)
    ]
    for holder in holders:
        assert holder.stdout.wait_for(f"holding {SLOTS_EACH} leases", 20), holder.describe()

    with Client(service.target, timeout_s=5.0) as client:

        def active() -> int:
            return client.load_status(LEASE_POOL).pools[0].active_leases

        # While their holders live, the leases outlive their TTL several times over (renewals).
        held_since = time.monotonic()
        seen = []
        while time.monotonic() - held_since < 3 * LEASE_TTL_S:
            seen.append(active())
            time.sleep(0.1)  # sampling interval of the pool's lease count
        assert set(seen) == {CAPACITY}, seen
        with pytest.raises(SlotDenied) as full:
            client.acquire_slot(LEASE_POOL)
        assert full.value.denial == "AT_CAPACITY"

        for holder in holders:
            holder.kill()  # SIGKILL: no release, no goodbye
            assert holder.proc.returncode == -9
        killed_at = time.monotonic()
        # Only GetLoadStatus from here until every lease is gone: the service's own sweep reclaims them.
        while (left := active()) > 0:
            assert time.monotonic() - killed_at < LEASE_TTL_S + 5.0, f"{left} leases still held"
            time.sleep(0.05)  # poll interval of the condition "no lease held"
        reclaimed_after_s = time.monotonic() - killed_at
        print(f"leases reclaimed {reclaimed_after_s:.2f} s after the kill (TTL {LEASE_TTL_S} s)")
        assert reclaimed_after_s <= LEASE_TTL_S + 3.0, f"reclaimed {reclaimed_after_s:.2f} s after the kill"

        mine = [client.acquire_slot(LEASE_POOL) for _ in range(CAPACITY)]  # all at once, no waiting
        assert all(not lease.fallback for lease in mine)
        with pytest.raises(SlotDenied):
            client.acquire_slot(LEASE_POOL)  # exactly the dead clients' slots came back
        assert [client.release_slot(lease.lease_id) for lease in mine] == [True] * CAPACITY
        assert active() == 0
    reclaimed = rf"(?s)(lease \S+ in pool {LEASE_POOL} reclaimed.*){{{CAPACITY}}}"
    assert service.process.stderr.wait_for(reclaimed, 5), service.process.describe()


# --- (c) a backend dies mid-load -----------------------------------------------------------

BACKENDS = ("b1", "b2", "b3")
VICTIM = "b2"


def start_backends(processes: Processes, target: str, pool: str) -> dict[str, tuple[Proc, str]]:
    """Starts one backend process per id; returns id -> (process, address)."""
    procs = {
        sid: processes.spawn([sys.executable, BACKEND_SCRIPT, target, pool, sid, "--interval-s", "0.2"])
        for sid in BACKENDS
    }
    started = {}
    for sid, proc in procs.items():
        match = proc.stdout.wait_for(_BACKEND_LISTENING, 20)
        assert match is not None and match.group(1) == sid, proc.describe()
        started[sid] = (proc, match.group(2))
    return started


async def configure_pool(target: str, pool: common_pb2.PoolConfig) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await admin_pb2_grpc.AdminServiceStub(channel).ConfigurePool(
            admin_pb2.ConfigurePoolRequest(pool=pool), timeout=5.0
        )


class BackendTraffic:
    """route("api") at a fixed rate, each calling the chosen backend for real; a failed call fails the route."""

    def __init__(self, client: AsyncClient, tally: Tally) -> None:
        self._client = client
        self._tally = tally
        self._channels: dict[str, grpc.aio.Channel] = {}
        # Times are when the selection was asked for: an answer to a later ask reflects every earlier state change.
        self.picks: list[tuple[float, str]] = []  # (asked at, server id)
        self.failures: list[tuple[float, str, str]] = []  # (asked at, server id, status code)
        self.stop = False

    async def _call(self) -> bool:
        asked_at = time.monotonic()
        async with self._client.route("api") as routed:
            self.picks.append((asked_at, routed.server_id))
            channel = self._channels.get(routed.address)
            if channel is None:
                channel = self._channels[routed.address] = grpc.aio.insecure_channel(routed.address)
            backend: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(BACKEND_METHOD)
            try:
                await backend(b"x", timeout=0.5)
            except grpc.aio.AioRpcError as err:
                routed.fail(err.code().name)
                self.failures.append((asked_at, routed.server_id, err.code().name))
        return routed.selection.fallback

    def run(self, rate_per_s: float) -> Awaitable[int]:
        return drive("route", rate_per_s, lambda: self.stop, lambda: self._tally.call("route", self._call), self._tally)

    def picked(self, server_id: str, since: float = 0.0) -> int:
        return sum(1 for t, sid in self.picks if sid == server_id and t >= since)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


async def _states(client: AsyncClient) -> dict[str, tuple[ServerState, int]]:
    """Server id -> (state, selections_total) of pool "api"."""
    pool = (await client.load_status("api")).pools[0]
    return {s.id: (s.state, s.selections_total) for s in pool.servers}


async def _kill_backend_under_load(
    processes: Processes, pool: common_pb2.PoolConfig, gone: ServerState
) -> tuple[BackendTraffic, Tally, dict[str, tuple[ServerState, int]], dict[str, tuple[ServerState, int]], float]:
    """Runs traffic over three backends, SIGKILLs one, waits for it to be `gone`, runs on.

    Returns:
        The traffic, its tally, the pool's states when `gone` was first seen and at the
        end, and when `gone` was first seen (monotonic).
    """
    service: Service = processes.serve(None)
    backends = start_backends(processes, service.target, pool.name)
    pool.servers.extend(common_pb2.ServerSpec(id=sid, address=addr) for sid, (_, addr) in backends.items())
    await configure_pool(service.target, pool)
    client = AsyncClient(service.target, timeout_s=2.0)
    checker = AsyncClient(service.target, timeout_s=2.0)
    tally = Tally()
    traffic = BackendTraffic(client, tally)

    async def all_serving() -> bool:
        return all(state is ServerState.SERVING for state, _ in (await _states(checker)).values())

    async def victim_gone() -> bool:
        return (await _states(checker))[VICTIM][0] is gone

    def others_served(since: float, n: int) -> bool:
        return all(traffic.picked(sid, since) >= n for sid in BACKENDS if sid != VICTIM)

    await wait_until(all_serving, 15, "every backend is serving")
    running = asyncio.ensure_future(traffic.run(60.0))
    try:
        began = time.monotonic()
        await wait_until(
            lambda: all(traffic.picked(sid, began) >= 20 for sid in BACKENDS), 20, "traffic reaches every backend"
        )
        assert not traffic.failures, traffic.failures
        backends[VICTIM][0].kill()  # SIGKILL mid-load
        await wait_until(victim_gone, 15, f"{VICTIM} becomes {gone.name}")
        gone_at = time.monotonic()
        at_gone = await _states(checker)
        await wait_until(lambda: others_served(gone_at, 40), 20, "traffic goes on to the other backends")
        at_end = await _states(checker)
    finally:
        traffic.stop = True
        await running
        await traffic.close()
        await client.close()
        await checker.close()
    return traffic, tally, at_gone, at_end, gone_at


def _check_victim_no_longer_selected(
    traffic: BackendTraffic,
    tally: Tally,
    at_gone: dict[str, tuple[ServerState, int]],
    at_end: dict[str, tuple[ServerState, int]],
    gone_at: float,
    gone: ServerState,
) -> None:
    summary = tally.summary()
    print(
        f"backend kill ({gone.name}): failed calls {len(traffic.failures)}, selections at gone {at_gone}, "
        f"at end {at_end}"
    )
    assert not tally.unexpected and not tally.fallback, summary
    assert at_end[VICTIM] == at_gone[VICTIM], (at_gone, at_end)  # still gone, and not selected once since
    assert traffic.picked(VICTIM, gone_at) == 0, traffic.picks[-20:]
    for sid in BACKENDS:
        if sid != VICTIM:
            assert at_end[sid][0] is ServerState.SERVING and at_end[sid][1] > at_gone[sid][1], (at_gone, at_end)
    # Every failed call went to the killed backend, and none after it was gone.
    assert traffic.failures and {sid for _, sid, _ in traffic.failures} == {VICTIM}, traffic.failures
    assert all(t <= gone_at for t, _, _ in traffic.failures), traffic.failures


async def test_a_backend_killed_mid_load_is_ejected_and_no_longer_selected(processes: Processes) -> None:
    consecutive = 3
    pool = common_pb2.PoolConfig(
        name="api",
        strategy="round_robin",
        outlier_detection=common_pb2.OutlierDetection(consecutive_failures=consecutive, base_ejection_time_ms=120_000),
    )
    traffic, tally, at_gone, at_end, gone_at = await _kill_backend_under_load(processes, pool, ServerState.EJECTED)
    _check_victim_no_longer_selected(traffic, tally, at_gone, at_end, gone_at, ServerState.EJECTED)
    assert len(traffic.failures) >= consecutive, traffic.failures


async def test_a_backend_killed_mid_load_goes_stale_and_is_no_longer_selected(processes: Processes) -> None:
    # Ejection off: only the load reports that stop when the backend dies take it out of rotation.
    pool = common_pb2.PoolConfig(
        name="api",
        strategy="round_robin",
        require_load_report=True,
        load_report_ttl_ms=2000,  # ten of the backends' report intervals
        outlier_detection=common_pb2.OutlierDetection(disabled=True),
    )
    traffic, tally, at_gone, at_end, gone_at = await _kill_backend_under_load(processes, pool, ServerState.STALE)
    _check_victim_no_longer_selected(traffic, tally, at_gone, at_end, gone_at, ServerState.STALE)
