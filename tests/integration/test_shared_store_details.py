"""Details of the Redis store that the replica-level tests do not show, over a real redis-server.

One script call (one round trip) per AcquireSlot, RenewLease and ReleaseSlot, seen with
MONITOR; exact priority order within a replica; ``pool_size`` bounding the connections
without failing a burst of more calls than that; and batch sizing (size, cooldown,
adjustments) answered alike by two replicas.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import grpc
import pytest
import redis as redis_py

from loadwarden.policy import OperationSettings
from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServiceConfig, start_service
from loadwarden.server.app._config import StateSettings
from loadwarden.server.shared import Peers, RedisSettings, SharedAdmission
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

_prefixes = itertools.count()

# Quoted: the async stub exists for type checkers only (@type_check_only in the .pyi).
Start = Callable[..., Awaitable[tuple[RunningService, "pb_grpc.DecisionServiceAsyncStub"]]]
# Background work quiet for the length of a test: no sweeps, exchanges or merges.
QUIET = {"exchange_interval_ms": 60_000, "merge_interval_ms": 3_600_000}


@pytest.fixture
async def start(redis_url: str) -> AsyncIterator[Start]:
    """``await start(*pools, prefix=..., url=..., **config_or_redis)``: a service on the store; a stub to it."""
    started: list[RunningService] = []
    channels: list[grpc.aio.Channel] = []

    async def _start(
        *pools: PoolSpec, prefix: str, url: str = redis_url, config: dict[str, Any] | None = None, **redis: Any
    ) -> tuple[RunningService, pb_grpc.DecisionServiceAsyncStub]:
        state = StateSettings(store="redis", redis=RedisSettings(url=url, key_prefix=prefix, **redis))
        running = await start_service(ServiceConfig(listen="127.0.0.1:0", pools=pools, state=state, **(config or {})))
        started.append(running)
        channel = grpc.aio.insecure_channel(running.target)
        channels.append(channel)
        return running, pb_grpc.DecisionServiceStub(channel)

    yield _start
    for channel in channels:
        await channel.close()
    for running in started:
        await running.stop(0)


def new_prefix() -> str:
    return f"{{d{next(_prefixes)}}}:"


def pool(name: str = "p", **settings: Any) -> PoolSpec:
    return PoolSpec(PoolSettings(name=name, **settings))


class Monitor:
    """Redis's MONITOR, read in a thread: the commands clients sent, between two markers."""

    def __init__(self, url: str) -> None:
        self._client = redis_py.Redis.from_url(url)
        self._marks = redis_py.Redis.from_url(url)
        self.commands: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(5), "MONITOR did not start"
        return self

    def _read(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            while True:
                command = monitor.next_command()
                self.commands.append(command)
                if command["command"] == "ECHO loadwarden-test-end":
                    return

    def mark(self, text: str) -> None:
        self._marks.echo(f"loadwarden-test-{text}")

    def __exit__(self, *exc: object) -> None:
        self.mark("end")
        self._thread.join(10)
        self._client.close()
        self._marks.close()

    def between(self, start: str, end: str, prefix: str) -> list[str]:
        """What replicas sent between ``mark(start)`` and ``mark(end)`` (not the scripts'
        own commands) naming ``prefix``, less the periodic configuration resync."""
        texts = [c["command"] for c in self.commands if c["client_type"] != "lua"]
        inside = texts[texts.index(f"ECHO loadwarden-test-{start}") + 1 : texts.index(f"ECHO loadwarden-test-{end}")]
        resync = {f"EXISTS {prefix}schema", f"GET {prefix}config:version"}
        return [t for t in inside if prefix in t and t not in resync]


async def test_acquire_renew_and_release_are_one_script_call_each(start: Start, redis_url: str) -> None:
    prefix = new_prefix()
    running, stub = await start(pool(max_concurrency=5), prefix=prefix, config={"expiry_interval_ms": 60_000}, **QUIET)
    admission = running.core.admission
    assert isinstance(admission, SharedAdmission)
    shas = {"acquire": admission._redis.acquire.sha, "renew": admission._redis.renew.sha}
    shas["release"] = admission._redis.release.sha
    # The first call of each script after a start loads it into Redis (NOSCRIPT, SCRIPT LOAD): not measured.
    warm = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"))
    await stub.RenewLease(pb.RenewLeaseRequest(lease_id=warm.lease.lease_id))
    await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=warm.lease.lease_id))
    with Monitor(redis_url) as monitor:
        for i in range(3):
            monitor.mark(f"acquire-{i}")
            granted = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="p", request_id=f"r-{i}"))
            monitor.mark(f"renew-{i}")
            await stub.RenewLease(pb.RenewLeaseRequest(lease_id=granted.lease.lease_id, ttl_ms=20_000))
            monitor.mark(f"release-{i}")
            await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=granted.lease.lease_id, success=True))
            monitor.mark(f"done-{i}")
    for i in range(3):
        for what, until in (("acquire", "renew"), ("renew", "release"), ("release", "done")):
            sent = monitor.between(f"{what}-{i}", f"{until}-{i}", prefix)
            assert [t.split(" ")[:2] for t in sent] == [["EVALSHA", shas[what]]], f"{what} #{i}: {sent}"


async def test_waiters_on_one_replica_are_served_by_priority_then_arrival(start: Start) -> None:
    _, stub = await start(pool(max_concurrency=1), prefix=new_prefix())
    held = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"))
    assert held.granted

    async def queued() -> int:
        status = await stub.GetLoadStatus(pb.GetLoadStatusRequest(pool="p"))
        return int(status.status.pools[0].queue_length)

    waiters: dict[str, asyncio.Future[pb.AcquireSlotResponse]] = {}
    for name, priority in (("low-1", 1), ("high-1", 7), ("low-2", 1), ("high-2", 7), ("mid", 4)):
        request = pb.AcquireSlotRequest(pool="p", priority=priority, max_wait_ms=30_000, request_id=name)
        waiters[name] = asyncio.ensure_future(stub.AcquireSlot(request, timeout=40))
        await wait_for(queued, lambda n: n == len(waiters), f"{name} queued")  # arrival order is this order
    served: list[str] = []
    lease_id = held.lease.lease_id
    while len(served) < len(waiters):
        await stub.ReleaseSlot(pb.ReleaseSlotRequest(lease_id=lease_id, success=True))
        pending = [w for n, w in waiters.items() if n not in served]
        done, _ = await asyncio.wait(pending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, f"one waiter per freed slot, got {len(done)} after {served}"
        (name,) = [n for n, w in waiters.items() if w in done]
        answer = waiters[name].result()
        assert answer.granted
        served.append(name)
        lease_id = answer.lease.lease_id
    assert served == ["high-1", "high-2", "mid", "low-1", "low-2"]


async def test_pool_size_bounds_the_connections_and_a_larger_burst_waits_for_one(start: Start, processes: Any) -> None:
    server = processes.redis()  # this test's own Redis: every client on it is the replica's or ours
    running, stub = await start(pool(max_concurrency=1_000), prefix=new_prefix(), url=server.url, pool_size=3)
    admission = running.core.admission
    assert isinstance(admission, SharedAdmission)
    client = redis_py.Redis.from_url(server.url)
    try:
        answers = await asyncio.gather(
            *[stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"), timeout=20) for _ in range(60)]
        )
        assert all(a.granted for a in answers)  # none refused: Redis is up, the calls waited for a connection
        assert not admission.down
        pool_connections = admission._redis.client.connection_pool
        assert pool_connections.max_connections == 3
        # Connections on Redis: the pool's (one of them the events subscription), the learned-state
        # store's own blocking client (not in the pool; see RedisBlobStore), and this test's.
        others = [c for c in client.client_list() if c["cmd"] != "client|list"]
        assert len(others) <= 3 + 1, others
    finally:
        client.close()


# A size change, then a cooldown that holds the size against a further change: the reason
# names the time left, which the owner recomputes on every answer.
COOLDOWN = re.compile(r"holding (\d+) for \d+ ms more")


def answer_of(response: pb.GetBatchSizeResponse) -> tuple[Any, ...]:
    reason = COOLDOWN.sub(r"holding \1 for N ms more", response.reason)
    return response.batch_size, response.load_score, response.load_level, reason, response.fallback


async def _owner(peers: Peers, operation: str) -> str | None:
    return peers.batch_owner(operation)


async def batch_replicas(start: Start) -> tuple[list[RunningService], list[pb_grpc.DecisionServiceAsyncStub]]:
    """Two replicas sizing ``etl`` (latency target 100 ms, a 60 s cooldown); the owner's first."""
    prefix = new_prefix()
    operation = OperationSettings(
        name="etl",
        mode="latency_target",
        target_latency_ms=100.0,
        default_batch_size=32,
        max_batch_size=64,
        cooldown_ms=60_000,
        load_source="pool",
        pool="p",
    )
    config = {"operations": (operation,)}
    started = [await start(pool(max_concurrency=4), prefix=prefix, config=config) for _ in range(2)]
    for running, _ in started:
        assert isinstance(running.core.peers, Peers)
        await wait_for(functools.partial(_owner, running.core.peers, "etl"), lambda o: o is not None, "an owner")
    peers = started[0][0].core.peers
    assert isinstance(peers, Peers)
    owner = peers.batch_owner("etl")
    started.sort(key=lambda pair: pair[0].core.ids.prefix != owner)
    return [s for s, _ in started], [stub for _, stub in started]


async def slow_batch(stub: pb_grpc.DecisionServiceAsyncStub) -> None:
    report = pb.BatchReport(operation="etl", batch_size=32, duration_ms=900.0, success=True)
    await stub.ReportBatch(pb.ReportBatchRequest(reports=[report]))


async def test_two_replicas_answer_the_same_size_cooldown_and_reason(start: Start) -> None:
    _, (owner, other) = await batch_replicas(start)

    async def answers() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        first = answer_of(await owner.GetBatchSize(pb.GetBatchSizeRequest(operation="etl")))
        return first, answer_of(await other.GetBatchSize(pb.GetBatchSizeRequest(operation="etl")))

    await slow_batch(other)  # reported to the other replica, sized by the owner
    changed = await wait_for(answers, lambda pair: pair[0] == pair[1] and pair[0][0] < 32, "one smaller size")
    size = changed[0][0]
    await slow_batch(other)  # would shrink it again, but the cooldown holds it
    held = await wait_for(answers, lambda pair: pair[0] == pair[1] and "cooldown" in pair[0][3], "one cooldown")
    assert held[0][0] == size and f"cooldown: holding {size} for N ms more" in held[0][3]


async def test_two_replicas_show_the_same_adjustments(start: Start) -> None:
    _, (owner, other) = await batch_replicas(start)
    await slow_batch(other)

    async def adjustments() -> list[tuple[int, list[tuple[int, int, str]]]]:
        shown = []
        for stub in (owner, other):
            await stub.GetBatchSize(pb.GetBatchSizeRequest(operation="etl"))
            status = (await stub.GetLoadStatus(pb.GetLoadStatusRequest())).status.operations[0]
            events = [(e.previous_size, e.new_size, e.reason) for e in status.recent_adjustments]
            shown.append((int(status.adjustments_total), events))
        return shown

    await wait_for(adjustments, lambda pair: pair[0][0] >= 1, "an adjustment on the owner")
    await wait_for(adjustments, lambda pair: pair[0] == pair[1], "the same adjustments on both", timeout_s=3)


async def test_the_other_replica_sees_which_adjustments_were_made_ahead_of_a_forecast(start: Start) -> None:
    from loadwarden.policy.batching import LoadOutlook
    from loadwarden.server import ServerSpec
    from loadwarden.v1 import common_pb2 as common

    prefix = new_prefix()
    operation = OperationSettings(
        name="etl", mode="threshold", min_batch_size=1, max_batch_size=64, load_source="pool", pool="p"
    )
    servers = PoolSpec(PoolSettings(name="p"), (ServerSpec("s1", "127.0.0.1:9001"),))
    started = [await start(servers, prefix=prefix, config={"operations": (operation,)}) for _ in range(2)]
    for running, _ in started:
        assert isinstance(running.core.peers, Peers)
        await wait_for(functools.partial(_owner, running.core.peers, "etl"), lambda o: o is not None, "an owner")
    peers = started[0][0].core.peers
    assert isinstance(peers, Peers)
    owner_prefix = peers.batch_owner("etl")
    (owner, owner_stub), (other, other_stub) = sorted(started, key=lambda s: s[0].core.ids.prefix != owner_prefix)
    report = common.LoadReport(pool="p", server_id="s1", cpu_percent=10.0)
    await owner_stub.ReportLoad(pb.ReportLoadRequest(reports=[report]))
    await wait_for(
        lambda: owner_stub.GetBatchSize(pb.GetBatchSizeRequest(operation="etl")),
        lambda a: 0.0 < a.load_score < 50.0 and a.batch_size == 64,  # low: the max size
        "the measured load",
    )
    # A forecast peak a second ahead: the owner shrinks the batches before it, and says so.
    now = owner.core.clock.monotonic()
    owner.core.operations["etl"].look_ahead(LoadOutlook(times=(now + 1.0,), scores=(95.0,), lead_s=2.0))
    answer = await owner_stub.GetBatchSize(pb.GetBatchSizeRequest(operation="etl"))
    assert answer.batch_size == 1 and answer.reason.startswith("forecast load 95.0")
    assert owner.core.operations["etl"].forecast_adjustments_total == 1

    async def shown() -> tuple[int, bool]:
        await other_stub.GetBatchSize(pb.GetBatchSizeRequest(operation="etl"))
        seen = other.core.operations["etl"]
        return seen.forecast_adjustments_total, bool(seen.events) and seen.events[-1].forecast

    await wait_for(shown, lambda pair: pair == (1, True), "the forecast adjustment on the other replica")
