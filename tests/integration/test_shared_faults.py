"""Redis taken away under load and brought back: each failure mode does what it says.

Two in-process replicas on a real redis-server that each test SIGKILLs (gone at once)
or SIGSTOPs (alive but silent, so every call would hang) while clients keep cycling
acquire/release with a 300 ms deadline. Every call's duration and answer is
recorded: none may outlive its deadline, and the answers must be the mode's:

* ``fail_closed``: UNAVAILABLE naming the store; DecisionService health NOT_SERVING.
* ``local``: each replica grants up to ``limit // replicas`` on its own.
* ``fail_open``: grants past the limit.

Then Redis comes back (empty, as without persistence) and admission is shared again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis as redis_py
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.server import PoolSettings, PoolSpec, RunningService, ServiceConfig, start_service
from loadwarden.server.app._config import StateSettings
from loadwarden.server.shared import RedisSettings
from loadwarden.v1 import decision_pb2 as pb
from loadwarden.v1 import decision_pb2_grpc as pb_grpc

from ..conftest import wait_for

DEADLINE_S = 0.3
SLACK_S = 0.15  # scheduling on a loaded 2-core machine; far below any Redis timeout
LIMIT = 4
LEASE_TTL_MS = 1_000  # a release that failed with Redis away leaves its lease this long
_prefixes = itertools.count()


@dataclass
class Replica:
    running: RunningService
    channel: grpc.aio.Channel
    stub: pb_grpc.DecisionServiceStub
    health: Any


@dataclass
class Load:
    """Clients cycling acquire/release on every replica until stopped; what each call got."""

    replicas: list[Replica]
    answers: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, replica: Replica) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                answer = await replica.stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"), timeout=DEADLINE_S)
                self.answers["granted" if answer.granted else "denied"] += 1
                if answer.granted:
                    await replica.stub.ReleaseSlot(
                        pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id), timeout=DEADLINE_S
                    )
            except grpc.aio.AioRpcError as exc:
                self.answers[exc.code().name] += 1
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            await asyncio.sleep(0.005)

    def run(self) -> asyncio.Future[Any]:
        return asyncio.gather(*(self.client(r) for r in self.replicas for _ in range(3)))


Start = Callable[..., Awaitable[list[Replica]]]


@pytest.fixture
async def replicas() -> AsyncIterator[Start]:
    started: list[Replica] = []

    async def _start(url: str, n: int = 2, **redis: Any) -> list[Replica]:
        state = StateSettings(
            store="redis",
            redis=RedisSettings(
                url=url,
                key_prefix=f"{{f{next(_prefixes)}}}:",
                connect_timeout_ms=200,
                command_timeout_ms=1_000,
                **redis,
            ),
        )
        pools = (PoolSpec(PoolSettings(name="p", max_concurrency=LIMIT, lease_ttl_ms=LEASE_TTL_MS)),)
        for _ in range(n):
            running = await start_service(ServiceConfig(listen="127.0.0.1:0", pools=pools, state=state))
            channel = grpc.aio.insecure_channel(running.target)
            started.append(
                Replica(running, channel, pb_grpc.DecisionServiceStub(channel), health_pb2_grpc.HealthStub(channel))
            )
        return started[-n:]

    yield _start
    for replica in started:
        await replica.channel.close()
        await replica.running.stop(0)


def count_leases(client: redis_py.Redis) -> int:
    return sum(int(client.hlen(key)) for key in client.scan_iter(match="*leases"))


async def decision_health(replica: Replica) -> int:
    request = health_pb2.HealthCheckRequest(service="loadwarden.v1.DecisionService")
    return int((await replica.health.Check(request, timeout=2)).status)


async def hold_all(replica: Replica, at_most: int) -> int:
    """Acquires without releasing until denied; returns how many were granted."""
    granted = 0
    for _ in range(at_most):
        answer = await replica.stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"), timeout=2)
        if not answer.granted:
            break
        granted += 1
    return granted


async def test_fail_closed_answers_unavailable_and_not_serving_then_comes_back(processes: Any, replicas: Start) -> None:
    redis = processes.redis()
    a, b = await replicas(redis.url, on_failure="fail_closed")
    load = Load([a, b])
    running = load.run()
    await wait_for(lambda: asyncio.sleep(0, load.answers["granted"]), lambda n: n >= 20, "shared grants")
    redis.kill()
    await wait_for(lambda: asyncio.sleep(0, load.answers["UNAVAILABLE"]), lambda n: n >= 10, "fail-closed answers")
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    for replica in (a, b):
        assert await decision_health(replica) == not_serving
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await a.stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shared state store is unreachable" in (refused.value.details() or "")
    redis.start()  # back, and empty
    for replica in (a, b):
        await wait_for(functools.partial(decision_health, replica), lambda s: s == serving, "SERVING", timeout_s=10)
    before = load.answers["granted"]
    await wait_for(lambda: asyncio.sleep(0, dict(load.answers)), lambda n: n["granted"] >= before + 20, "shared again")
    load.stop.set()
    await running
    assert load.slowest_s <= DEADLINE_S + SLACK_S, f"a call took {load.slowest_s:.3f} s"
    assert set(load.answers) <= {"granted", "denied", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, load.answers
    # A release that failed while Redis restarted leaves its lease until its TTL; then one count again.
    client = redis_py.Redis.from_url(redis.url)
    try:
        await wait_for(lambda: asyncio.to_thread(count_leases, client), lambda n: n == 0, "leases ended", timeout_s=5)
    finally:
        client.close()
    assert await hold_all(a, LIMIT + 2) + await hold_all(b, LIMIT + 2) == LIMIT


async def test_local_mode_grants_each_replica_its_share(processes: Any, replicas: Start) -> None:
    redis = processes.redis()
    a, b = await replicas(redis.url, on_failure="local", replicas=2)
    assert await hold_all(a, 1) == 1  # shared: works
    redis.kill()
    await wait_for(
        lambda: a.stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"), timeout=2),
        lambda answer: answer.granted,
        "a local grant",
    )
    # a holds one local lease now; its share is LIMIT // 2 in all.
    assert await hold_all(a, LIMIT) == LIMIT // 2 - 1
    assert await hold_all(b, LIMIT) == LIMIT // 2
    assert (await decision_health(a)) == health_pb2.HealthCheckResponse.SERVING


async def test_fail_open_grants_past_the_limit(processes: Any, replicas: Start) -> None:
    redis = processes.redis()
    (a,) = await replicas(redis.url, n=1, on_failure="fail_open")
    redis.kill()
    await wait_for(
        lambda: a.stub.AcquireSlot(pb.AcquireSlotRequest(pool="p"), timeout=2),
        lambda answer: answer.granted,
        "a grant with Redis gone",
    )
    assert await hold_all(a, 3 * LIMIT) == 3 * LIMIT


async def test_a_silent_redis_never_holds_a_call_past_its_deadline(processes: Any, replicas: Start) -> None:
    redis = processes.redis()
    a, b = await replicas(redis.url, on_failure="local", replicas=2)
    load = Load([a, b])
    running = load.run()
    await wait_for(lambda: asyncio.sleep(0, load.answers["granted"]), lambda n: n >= 20, "shared grants")
    assert redis.proc is not None
    redis.proc.signal(signal.SIGSTOP)  # alive, accepting nothing: every Redis call hangs
    try:
        before = load.answers["granted"]
        await wait_for(
            lambda: asyncio.sleep(0, load.answers["granted"]), lambda n: n >= before + 50, "local grants", timeout_s=10
        )
    finally:
        redis.proc.signal(signal.SIGCONT)
    load.stop.set()
    await running
    assert load.slowest_s <= DEADLINE_S + SLACK_S, f"a call took {load.slowest_s:.3f} s: {load.answers}"


async def test_rate_limits_follow_their_own_failure_mode(processes: Any) -> None:
    from loadwarden.policy import RateLimit

    redis = processes.redis()
    rate = RateLimit(count=10, per_s=60.0, burst=10)
    started = []
    try:
        answers: dict[str, list[str]] = {}
        for mode in ("local", "fail_closed", "fail_open"):
            state = StateSettings(
                store="redis",
                redis=RedisSettings(
                    url=redis.url,
                    key_prefix=f"{{rl{next(_prefixes)}}}:",
                    on_failure="fail_open",
                    rate_limit_on_failure=mode,
                    replicas=2,
                ),
            )
            pools = (PoolSpec(PoolSettings(name="p", rate_limit=rate)),)
            running = await start_service(ServiceConfig(listen="127.0.0.1:0", pools=pools, state=state))
            started.append(running)
        redis.kill()
        for mode, running in zip(("local", "fail_closed", "fail_open"), started, strict=True):
            async with grpc.aio.insecure_channel(running.target) as channel:
                stub = pb_grpc.DecisionServiceStub(channel)
                seen = []
                for _ in range(12):
                    try:
                        answer = await stub.AcquireSlot(pb.AcquireSlotRequest(pool="p", client_key="k"), timeout=2)
                        seen.append("granted" if answer.granted else "denied")
                    except grpc.aio.AioRpcError as exc:
                        seen.append(exc.code().name)
                answers[mode] = seen
        # local: this replica's share, 10 // 2 per minute; the first call may meet Redis's failure.
        assert answers["local"].count("granted") == 5, answers["local"]
        assert set(answers["local"][-6:]) == {"RESOURCE_EXHAUSTED"}
        assert set(answers["fail_closed"]) == {"UNAVAILABLE"}, answers["fail_closed"]
        assert answers["fail_open"] == ["granted"] * 12
    finally:
        for running in started:
            await running.stop(0)
