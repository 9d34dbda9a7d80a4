"""Redis taken away under load and brought back: each failure mode does what it says.

Two in-process replicas on a real redis-server that each test SIGKILLs (gone at once)
or SIGSTOPs (alive but silent, so every call would hang) while clients keep cycling
acquire/release with a 300 ms deadline. Every call's duration and answer is
recorded, by phase (before the kill, while both replicas know Redis is gone, after
both know it is back): none may outlive its deadline, and the answers must be the
mode's (README "When Redis is unreachable"):

* ``fail_closed``: UNAVAILABLE naming the store; DecisionService health NOT_SERVING.
* ``local``: each replica grants up to ``limit // replicas`` on its own.
* ``fail_open``: grants past the limit.

Admission (``on_failure``) and rate limits (``rate_limit_on_failure``) are each run
through every mode. Then Redis comes back (empty, as without persistence) and
admission and the rate bucket are shared again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import redis as redis_py
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # grpcio-health-checking: no stubs, no py.typed

from loadwarden.policy import RateLimit
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
RATE = RateLimit(count=6, per_s=60.0, burst=6)  # pool "r": one token back every 10 s
OUTAGE_S = 2.0  # Redis stays away at least this long: five probe attempts at least, unloaded
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_prefixes = itertools.count()


@dataclass
class Replica:
    running: RunningService
    channel: grpc.aio.Channel
    stub: pb_grpc.DecisionServiceAsyncStub
    health: Any

    @property
    def down(self) -> bool:
        """Whether this replica answers as its failure mode says (Redis failed, no probe got through)."""
        return bool(self.running.core.admission.down)  # type: ignore[attr-defined]  # SharedAdmission


@dataclass(frozen=True)
class Held:
    """A granted lease: on which replica, in which phase, from after the grant to before the release."""

    replica: int
    phase: str
    granted: float
    released: float


@dataclass
class Load:
    """Clients cycling acquire/release on every replica until stopped; what each call got.

    ``phase`` names the part of the test a call is sent and answered in (a call
    answered in a later phase than it was sent counts for neither); a rate-limited
    pool's calls carry it as their client key, so each phase has a bucket of its own.
    """

    replicas: list[Replica]
    pool: str = "p"
    hold_s: float = 0.01
    phase: str = "before"
    answers: Counter[str] = field(default_factory=Counter)
    by_phase: defaultdict[tuple[str, int], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    held: list[Held] = field(default_factory=list)
    slowest_s: float = 0.0
    slowest: str = ""  # the slowest call: what, when, how it ended
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def seen(self, phase: str, answer: str) -> int:
        """How many acquires started in ``phase`` got ``answer``, over every replica."""
        return sum(c[answer] for (p, _), c in self.by_phase.items() if p == phase)

    async def timed(self, call: Callable[..., Awaitable[Any]], request: Any) -> Any:
        started, phase = time.monotonic(), self.phase
        outcome = "answered"
        try:
            return await call(request, timeout=DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            outcome = exc.code().name
            raise
        finally:
            took_s = time.monotonic() - started
            if took_s > self.slowest_s:
                self.slowest_s, self.slowest = took_s, f"{type(request).__name__} sent in {phase}: {outcome}"

    async def client(self, index: int, replica: Replica) -> None:
        while not self.stop.is_set():
            phase = self.phase
            key = phase if self.pool == "r" else ""
            try:
                answer = await self.timed(
                    replica.stub.AcquireSlot, pb.AcquireSlotRequest(pool=self.pool, client_key=key)
                )
                kind = "granted" if answer.granted else "denied"
            except grpc.aio.AioRpcError as exc:
                answer, kind = None, exc.code().name
            if self.phase != phase:  # answered by what came after the phase it was sent in: neither's
                phase = f"{phase}>{self.phase}"
            self.answers[kind] += 1
            self.by_phase[(phase, index)][kind] += 1
            if answer is not None and answer.granted:
                granted = time.monotonic()
                await asyncio.sleep(self.hold_s)  # the work
                self.held.append(Held(index, phase, granted, time.monotonic()))
                try:
                    await self.timed(replica.stub.ReleaseSlot, pb.ReleaseSlotRequest(lease_id=answer.lease.lease_id))
                except grpc.aio.AioRpcError as exc:
                    self.answers[f"release {exc.code().name}"] += 1
            await asyncio.sleep(0.005)

    def run(self) -> asyncio.Future[Any]:
        return asyncio.gather(*(self.client(i, r) for i, r in enumerate(self.replicas) for _ in range(3)))

    def most_held(self, phase: str, replica: int | None = None) -> int:
        """The most leases granted in ``phase`` (on ``replica``, or any) held at one instant."""
        chosen = [h for h in self.held if h.phase == phase and replica in (None, h.replica)]
        events = sorted([(h.granted, 1) for h in chosen] + [(h.released, -1) for h in chosen])
        held = peak = 0
        for _, step in events:
            held += step
            peak = max(peak, held)
        return peak

    def granted_on(self, phase: str, replica: int) -> int:
        return self.by_phase[(phase, replica)]["granted"]


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
                # The default: the kill is seen at once (refused connections, reset sockets),
                # and a shorter wait lets a connect slowed by a loaded machine start an outage.
                connect_timeout_ms=1_000,
                command_timeout_ms=1_000,
                **redis,
            ),
        )
        pools = (
            PoolSpec(PoolSettings(name="p", max_concurrency=LIMIT, lease_ttl_ms=LEASE_TTL_MS)),
            PoolSpec(PoolSettings(name="r", max_concurrency=0, lease_ttl_ms=LEASE_TTL_MS, rate_limit=RATE)),
        )
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


class ProbeLog(logging.Handler):
    """Times of the store probe's failed attempts, by probe task (one per replica and outage)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.attempts: defaultdict[int, list[float]] = defaultdict(list)
        self.began: list[tuple[float, str]] = []  # when a replica began answering as its failure mode says, why

    @property
    def outages(self) -> int:
        return len(self.began)

    def before(self, moment: float) -> list[str]:
        """The outages that began before ``moment``: a Redis call that failed with Redis up."""
        return [message for at, message in self.began if at < moment]

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("the shared state store is unreachable ("):
            self.began.append((time.monotonic(), message))
        if message.startswith("the shared state store is still unreachable"):
            task = asyncio.current_task()  # the handler runs in the logging task
            self.attempts[id(task)].append(time.monotonic())


@pytest.fixture
def probe_log() -> Iterator[ProbeLog]:
    logger = logging.getLogger("loadwarden.server")
    handler, level = ProbeLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


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


async def _now(value: Any) -> Any:
    return value


def until(load: Load, condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> Awaitable[Any]:
    return wait_for(lambda: _now(condition()), bool, f"{what} ({dict(load.answers)})", timeout_s=timeout_s)


def rate_bound(elapsed_s: float, count: int = RATE.count, burst: int = RATE.burst) -> int:
    """The most one bucket allows in ``elapsed_s``: its burst and the tokens back meanwhile."""
    return burst + math.ceil(count * elapsed_s / RATE.per_s)


MODES = ("fail_closed", "local", "fail_open")


@pytest.mark.serial  # every call's time against its deadline: clients and replicas share one event loop
@pytest.mark.parametrize("surface", ["admission", "rate_limit"])
@pytest.mark.parametrize("mode", MODES)
async def test_redis_killed_under_load_then_restarted_each_mode_as_documented(
    processes: Any, replicas: Start, probe_log: ProbeLog, surface: str, mode: str
) -> None:
    redis = processes.redis()
    if surface == "admission":
        a, b = await replicas(redis.url, on_failure=mode, replicas=2)
        load = Load([a, b], hold_s=0.02 if mode == "fail_open" else 0.01)
    else:  # admission itself grants on: only the rate limit's own mode decides
        a, b = await replicas(redis.url, on_failure="fail_open", rate_limit_on_failure=mode, replicas=2)
        load = Load([a, b], pool="r")
    began = time.monotonic()
    running = load.run()
    try:
        if surface == "admission":
            await until(load, lambda: load.seen("before", "granted") >= 20, "shared grants")
        else:  # the one bucket spent: refusals on both replicas
            await until(
                load, lambda: all(load.by_phase[("before", i)]["RESOURCE_EXHAUSTED"] >= 5 for i in (0, 1)), "spent"
            )

        load.phase = "killing"
        redis.kill()
        killed = time.monotonic()
        await until(load, lambda: a.down and b.down, "both replicas know Redis is gone")
        load.phase = "outage"
        for replica in (a, b):
            assert await decision_health(replica) == (NOT_SERVING if mode == "fail_closed" else SERVING), mode
        if mode == "fail_closed":
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await a.stub.AcquireSlot(pb.AcquireSlotRequest(pool=load.pool, client_key="probe"), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "while the shared state store is unreachable" in (refused.value.details() or "")
            await until(load, lambda: load.seen("outage", "UNAVAILABLE") >= 20, "fail-closed answers")
        elif surface == "admission" and mode == "local":
            await until(
                load,
                lambda: load.seen("outage", "granted") >= 20 and load.seen("outage", "denied") >= 5,
                "local grants, each replica at its share",
            )
        elif surface == "admission":  # fail_open
            await until(load, lambda: load.most_held("outage") > LIMIT, "more holders than the limit")
        elif mode == "local":
            await until(
                load,
                lambda: all(load.by_phase[("outage", i)]["RESOURCE_EXHAUSTED"] >= 5 for i in (0, 1)),
                "each replica's share of the bucket spent",
            )
        else:  # rate_limit fail_open
            await until(load, lambda: load.seen("outage", "granted") >= 3 * RATE.burst, "grants past the rate")
        await until(load, lambda: time.monotonic() - killed >= OUTAGE_S, "the outage's length")
        for replica in (a, b):
            assert await decision_health(replica) == (NOT_SERVING if mode == "fail_closed" else SERVING), mode

        load.phase = "restarting"
        redis.start()  # back, and empty
        await until(load, lambda: not a.down and not b.down, "both replicas know Redis is back")
        for replica in (a, b):
            await wait_for(functools.partial(decision_health, replica), lambda s: s == SERVING, "SERVING", timeout_s=10)
        load.phase = "after"
        if surface == "admission":
            await until(load, lambda: load.seen("after", "granted") >= 20, "shared grants again")
        else:
            await until(
                load, lambda: all(load.by_phase[("after", i)]["RESOURCE_EXHAUSTED"] >= 5 for i in (0, 1)), "spent"
            )
    finally:
        load.stop.set()
        await running
    elapsed_s = time.monotonic() - began

    assert load.slowest_s <= DEADLINE_S + SLACK_S, f"{load.slowest} took {load.slowest_s:.3f} s: {dict(load.answers)}"
    assert not probe_log.before(killed), f"an outage began with Redis up: {probe_log.before(killed)}"
    outage = load.by_phase[("outage", 0)] + load.by_phase[("outage", 1)]
    if mode == "fail_closed":
        assert set(outage) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, outage  # nothing granted, nothing counted
    elif surface == "admission" and mode == "local":
        assert set(outage) <= {"granted", "denied", "DEADLINE_EXCEEDED"}, outage
        assert max(load.most_held("outage", i) for i in (0, 1)) <= LIMIT // 2
    elif surface == "admission":
        assert set(outage) <= {"granted", "DEADLINE_EXCEEDED"}, outage  # never denied
    elif mode == "local":  # each replica a bucket of its own at half the rate
        assert set(outage) <= {"granted", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}, outage
        for i in (0, 1):
            assert 1 <= load.granted_on("outage", i) <= rate_bound(elapsed_s, RATE.count // 2, RATE.burst // 2)
    else:
        assert set(outage) <= {"granted", "DEADLINE_EXCEEDED"}, outage
    if surface == "admission":
        # Shared before and after: one count over both replicas.
        assert load.most_held("before") <= LIMIT and load.most_held("after") <= LIMIT
        # A release that failed while Redis restarted leaves its lease until its TTL; then one count again.
        client = redis_py.Redis.from_url(redis.url)
        try:
            await wait_for(lambda: asyncio.to_thread(count_leases, client), lambda n: n == 0, "leases ended")
        finally:
            client.close()
        assert await hold_all(a, LIMIT + 2) + await hold_all(b, LIMIT + 2) == LIMIT
    else:
        # One bucket over both replicas before and after (two would allow twice the burst).
        for phase in ("before", "after"):
            allowed = load.granted_on(phase, 0) + load.granted_on(phase, 1)
            assert RATE.burst <= allowed <= min(RATE.count + RATE.burst, rate_bound(elapsed_s)), (phase, allowed)
    # One outage per replica: once back, a replica stays back (no connection from before the
    # restart fails a later call and starts another, during which local would over-admit).
    assert probe_log.outages == 2, f"{probe_log.outages} outages began on two replicas"
    check_probe_backoff(probe_log)


def check_probe_backoff(probe_log: ProbeLog) -> None:
    """Each replica's probe waited at least 50 ms doubling (to 2 s) between its failed attempts.

    Only lower bounds: a loaded machine can only stretch the waits, so this cannot flake;
    that the wait stops growing at 2 s would need an upper bound on wall-clock time.
    """
    probes = [times for times in probe_log.attempts.values() if len(times) >= 2]
    assert len(probes) >= 2, f"a probe per replica, each with attempts to compare: {dict(probe_log.attempts)}"
    for times in probes:
        for k, (earlier, later) in enumerate(itertools.pairwise(times), start=1):
            wanted_s = min(2.0, 0.05 * 2**k)
            assert later - earlier >= wanted_s - 0.005, f"attempt {k + 1} came {later - earlier:.3f} s after the last"


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


@pytest.mark.serial  # as above
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
