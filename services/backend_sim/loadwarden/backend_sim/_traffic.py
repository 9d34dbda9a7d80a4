"""Real traffic through the SDK to simulated backends: open and closed loop, three modes.

Every request asks the Decision service through an ``AsyncClient``, then calls
the chosen backend's ``Handle`` RPC with the scenario's deadline:

- ``route``: ``async with client.route(pool) as route:`` around the call, so a
  failed or timed-out call escapes the block and is reported as a failed outcome.
- ``slot``: ``async with client.slot(pool, select_server=True) as lease:`` around
  the call; the pool's strategy picks the backend with the slot (its release
  reports the outcome), and a local-fallback lease without a server goes to the
  backends in round robin. A denied slot is recorded with server ``""``.
- ``batch``: background open-loop traffic as in ``route`` (the load that ramps),
  plus ``BatchSettings.workers`` loops that each ask ``client.batch_size``, send
  a batch of that many items to the next backend in round robin (a batch of n
  items takes ``1 + item_cost x (n - 1)`` times a request's service time), and
  report it with ``client.report_batch``. See ``_batch_mode``.

Arrival times (open loop) and think times (closed loop) come from the seed
alone, so every strategy sees the same arrivals. An open-loop arrival that finds
``max_in_flight`` requests in flight is dropped: recorded with server ``""`` as
a failure that reached no server.

A plan may be one client's share of the traffic (``TrafficPlan.client`` of
``clients``, for ``evaluate``'s client processes): each open-loop arrival goes to
the client ``client_shares`` draws for it (seeded: every run splits the same
arrivals the same way; each share is Poisson at 1/``clients`` of the rate), with
``max_in_flight`` split evenly; closed-loop user ``u`` is client ``u %
clients``'s, and ``requests`` is split evenly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from loadwarden.sdk import AsyncClient, LoadwardenError, ResourceExhaustedError, SlotDenied
from loadwarden.v1 import backend_sim_pb2 as _pb
from loadwarden.v1 import backend_sim_pb2_grpc as _pb_grpc

from ._batch_mode import BatchRecord, BatchSettings, run_batch_workers
from ._config import MAX_REQUESTS, Arrivals, ClosedLoop
from ._summary import RequestRecord

MODES = ("route", "slot", "batch")
# A request without a scenario deadline still gets one, seconds: nothing waits forever.
DEFAULT_TIMEOUT_S = 30.0
# Open-loop requests in flight when the scenario sets no bound; arrivals beyond it are dropped.
DEFAULT_MAX_IN_FLIGHT = 10_000
# The most clients one plan's traffic may be split over.
MAX_CLIENTS = 1_000
# An open-loop arrival sent this much after its time, s, counts as late: the sender fell behind.
LATE_AFTER_S = 0.05

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """What to send, and how.

    Attributes:
        mode: ``route``, ``slot`` or ``batch``.
        pool: Pool to route in (route, batch's background traffic) or take slots from (slot).
        traffic: Open-loop ``Arrivals`` or closed-loop ``ClosedLoop``.
        seed: Seeds arrival and think times; the same seed, the same arrivals.
        timeout_ms: Deadline of each backend call, ms; None means 30 s.
        slot_wait_s: How long a slot request may wait in the pool's queue, seconds (slot mode).
        batch: The batch workers (batch mode only).
        client: Which share of the traffic this plan sends, 0-``clients - 1``.
        clients: How many shares the traffic is split into (1: all of it).
    """

    mode: str
    pool: str
    traffic: Arrivals | ClosedLoop
    seed: int = 0
    timeout_ms: float | None = None
    slot_wait_s: float = 0.0
    batch: BatchSettings | None = None
    client: int = 0
    clients: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.pool, str) or not self.pool:
            raise ValueError(f"pool: must be a non-empty string, got {self.pool!r}")
        if not isinstance(self.traffic, (Arrivals, ClosedLoop)):
            raise ValueError(f"traffic: must be an Arrivals or a ClosedLoop, got {self.traffic!r}")
        if self.timeout_ms is not None and not (0 < self.timeout_ms < math.inf):
            raise ValueError(f"timeout_ms: must be a finite number > 0, got {self.timeout_ms!r}")
        if not (0 <= self.slot_wait_s <= 3600):
            raise ValueError(f"slot_wait_s: must be in [0, 3600], got {self.slot_wait_s!r}")
        if self.mode == "batch":
            if self.batch is None:
                raise ValueError("batch: mode batch needs the [batch] settings")
            if not isinstance(self.traffic, Arrivals):
                raise ValueError("traffic.kind: mode batch runs open-loop background traffic")
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or not 1 <= self.clients <= MAX_CLIENTS:
            raise ValueError(f"clients: must be an integer in [1, {MAX_CLIENTS}], got {self.clients!r}")
        if isinstance(self.client, bool) or not isinstance(self.client, int) or not 0 <= self.client < self.clients:
            raise ValueError(f"client: must be an integer in [0, {self.clients - 1}], got {self.client!r}")
        if self.clients > 1 and self.mode == "batch":
            raise ValueError("clients: mode batch runs from one client")

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000.0 if self.timeout_ms is not None else DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class TrafficResult:
    """What one run sent and saw.

    Attributes:
        records: One per request, in arrival order (open loop) or send order
            (closed loop); ``time_s`` from the start of the traffic, latency from
            the moment the request started to its answer (decision included).
        batches: One per batch (batch mode), in start order.
        dropped: Open-loop arrivals over ``max_in_flight`` (never sent).
        rejected: Slots denied, or RESOURCE_EXHAUSTED (slot mode).
        timeouts: Backend calls that ran out of their deadline.
        unrouted: Requests the Decision service could not route (no server), count.
        fallbacks: Decisions the SDK made locally (service unreachable), count.
        duration_s: Seconds from the start of the traffic to the last answer.
        local: Decisions the SDK made from a pushed routing table (``decisions="local"``), count.
        stale: Of those, decisions from a table whose stream had been broken too long, count.
        late: Open-loop arrivals sent more than ``LATE_AFTER_S`` after their time (this
            process could not keep up: a busy machine), count.
    """

    records: tuple[RequestRecord, ...]
    batches: tuple[BatchRecord, ...] = ()
    dropped: int = 0
    rejected: int = 0
    timeouts: int = 0
    unrouted: int = 0
    fallbacks: int = 0
    duration_s: float = 0.0
    local: int = 0
    stale: int = 0
    late: int = 0

    def counters(self) -> dict[str, int]:
        """The counters, by the report's names (``StrategyRun.counters``)."""
        return {
            "dropped": self.dropped,
            "rejected": self.rejected,
            "timed_out": self.timeouts,
            "unavailable": self.unrouted,
            "fallbacks": self.fallbacks,
            "local": self.local,
            "stale": self.stale,
            "late": self.late,
        }


def arrival_times(arrivals: Arrivals, rng: random.Random) -> list[float]:
    """Poisson arrival times, seconds from 0, drawn from ``rng`` alone.

    A rate that varies (a ramp, ``rate_end_per_s``; surges) is drawn by thinning:
    candidates at the highest rate, each kept with probability ``rate_at(t) / peak``.
    Stops at ``requests`` arrivals or ``duration_s``, whichever comes first.
    """
    limit = min(arrivals.requests or MAX_REQUESTS, MAX_REQUESTS)
    horizon = arrivals.duration_s if arrivals.duration_s is not None else math.inf
    end_rate = arrivals.rate_end_per_s if arrivals.rate_end_per_s is not None else arrivals.rate_per_s
    peak = arrivals.peak_rate_per_s
    constant = arrivals.surges is None and peak == arrivals.rate_per_s == end_rate
    times: list[float] = []
    t = 0.0
    while len(times) < limit:
        t += rng.expovariate(peak)
        if t > horizon:
            break
        if constant or rng.random() * peak <= arrivals.rate_at(t):
            times.append(t)
    return times


def client_shares(count: int, clients: int, seed: int) -> list[int]:
    """The client (0-``clients - 1``) that sends each of ``count`` arrivals, drawn uniformly
    from ``seed`` alone: the same arrivals are split the same way in every run."""
    if clients == 1:
        return [0] * count
    rng = random.Random(f"loadwarden-clients-{seed}")  # a str seed is hashed with SHA-512: stable
    return [rng.randrange(clients) for _ in range(count)]


def planned_requests(plan: TrafficPlan) -> int | None:
    """How many requests ``plan`` sends: exact for open loop; closed loop's ``requests`` (an
    upper bound when a duration is set too); None when only a duration bounds it."""
    if isinstance(plan.traffic, Arrivals):
        return len(arrival_times(plan.traffic, random.Random(plan.seed)))
    return plan.traffic.requests


class Backends:
    """One channel per backend address; calls ``Handle`` with a deadline."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        if not addresses:
            raise ValueError("backends: at least one backend address is needed")
        self.addresses = dict(addresses)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, _pb_grpc.SimulatedBackendServiceAsyncStub] = {}
        self._order = list(self.addresses.items())
        self._next = itertools.count()

    def round_robin(self) -> tuple[str, str]:
        """The next (server id, address) in turn."""
        return self._order[next(self._next) % len(self._order)]

    async def call(self, address: str, *, items: int = 1, timeout_s: float) -> _pb.HandleResponse:
        """One Handle RPC to ``address``.

        Raises:
            grpc.aio.AioRpcError: The backend failed, refused or the deadline passed.
        """
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
            stub = self._stubs[address] = _pb_grpc.SimulatedBackendServiceStub(channel)
        return await stub.Handle(_pb.HandleRequest(items=items), timeout=timeout_s)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


@dataclass
class _Counters:
    dropped: int = 0
    rejected: int = 0
    timeouts: int = 0
    unrouted: int = 0
    fallbacks: int = 0
    local: int = 0
    stale: int = 0
    late: int = 0
    in_flight: int = 0
    done: int = 0
    records: list[RequestRecord | None] = field(default_factory=list)


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED


class TrafficRunner:
    """Runs a ``TrafficPlan`` against a Decision service and backends.

    Args:
        plan: What to send.
        client: The SDK client (the caller keeps and closes it).
        backends: Server id -> address of every backend of the pool.
        clock: Monotonic seconds.
        sleep: Async sleep, seconds.
        progress: Called with the count of finished requests (dropped ones included) as they finish.

    ``run`` may be called once: it closes its channels to the backends when done.
    """

    def __init__(
        self,
        plan: TrafficPlan,
        client: AsyncClient,
        backends: Mapping[str, str],
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        progress: Progress | None = None,
    ) -> None:
        self.plan = plan
        self._client = client
        self._backends = Backends(backends)
        self._clock = clock
        self._sleep = sleep
        self._progress = progress
        self._counters = _Counters()
        self._start = 0.0

    async def run(self) -> TrafficResult:
        """Sends the whole plan and waits for every request; closes the backend channels."""
        self._start = self._clock()
        try:
            if isinstance(self.plan.traffic, Arrivals):
                sender = self._open_loop(self.plan.traffic)
            else:
                sender = self._closed_loop(self.plan.traffic)
            batches: Sequence[BatchRecord] = ()
            if self.plan.mode == "batch":
                assert self.plan.batch is not None
                stop = asyncio.Event()

                async def background() -> None:
                    try:
                        await sender
                    finally:
                        stop.set()

                _, batches = await asyncio.gather(
                    background(),
                    run_batch_workers(
                        self.plan.batch,
                        self._client,
                        self._backends,
                        stop,
                        start=self._start,
                        clock=self._clock,
                        timeout_s=self.plan.timeout_s,
                    ),
                )
            else:
                await sender
        finally:
            await self._backends.close()
        c = self._counters
        records = tuple(r for r in c.records if r is not None)
        end = max((r.time_s + r.latency_ms / 1000.0 for r in records), default=0.0)
        end = max([end, *(b.time_s + b.latency_ms / 1000.0 for b in batches)])
        return TrafficResult(
            records,
            tuple(batches),
            c.dropped,
            c.rejected,
            c.timeouts,
            c.unrouted,
            c.fallbacks,
            end,
            c.local,
            c.stale,
            c.late,
        )

    # -- senders ---------------------------------------------------------------

    async def _open_loop(self, arrivals: Arrivals) -> None:
        plan = self.plan
        times = arrival_times(arrivals, random.Random(plan.seed))
        bound = arrivals.max_in_flight or DEFAULT_MAX_IN_FLIGHT
        if plan.clients > 1:
            shares = client_shares(len(times), plan.clients, plan.seed)
            times = [t for t, owner in zip(times, shares, strict=True) if owner == plan.client]
            bound = max(1, math.ceil(bound / plan.clients))
        c = self._counters
        c.records = [None] * len(times)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for index, at in enumerate(times):
                delay = self._start + at - self._clock()
                if delay > 0:
                    await self._sleep(delay)
                elif -delay > LATE_AFTER_S:
                    c.late += 1
                if c.in_flight >= bound:
                    c.dropped += 1
                    c.records[index] = RequestRecord(at, "", 0.0, False, False)
                    self._finished()
                    continue
                c.in_flight += 1
                task = asyncio.get_running_loop().create_task(self._request(index, at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _closed_loop(self, users: ClosedLoop) -> None:
        plan = self.plan
        master = random.Random(plan.seed)
        rngs = [random.Random(master.getrandbits(64)) for _ in range(users.users)]
        rngs = rngs[plan.client :: plan.clients]  # user u is client u % clients's
        limit = users.requests if users.requests is not None else MAX_REQUESTS
        if plan.clients > 1 and users.requests is not None:
            limit = limit // plan.clients + (plan.client < limit % plan.clients)
        horizon = users.duration_s if users.duration_s is not None else math.inf
        c = self._counters
        sent = itertools.count()

        async def user(rng: random.Random) -> None:
            while True:
                if users.think_ms > 0:
                    await self._sleep(rng.expovariate(1000.0 / users.think_ms))
                at = self._clock() - self._start
                if at > horizon:
                    return
                index = next(sent)
                if index >= limit:
                    return
                c.records.append(None)
                c.in_flight += 1
                await self._request(len(c.records) - 1, at)

        await asyncio.gather(*(user(rng) for rng in rngs))

    # -- one request -------------------------------------------------------------

    async def _request(self, index: int, at: float) -> None:
        c = self._counters
        started = self._clock()
        server, success, explored = "", False, False
        try:
            if self.plan.mode == "slot":
                server, success = await self._slot_request()
            else:
                server, success, explored = await self._route_request()
        finally:
            c.in_flight -= 1
            latency_ms = (self._clock() - started) * 1000.0
            c.records[index] = RequestRecord(at, server, latency_ms, success, explored)
            self._finished()

    async def _route_request(self) -> tuple[str, bool, bool]:
        c = self._counters
        server, explored = "", False
        try:
            async with self._client.route(self.plan.pool) as route:
                selection = route.selection
                server, explored = route.server_id, selection.explored
                c.fallbacks += selection.fallback
                c.local += selection.local
                c.stale += selection.stale
                await self._backends.call(route.address, timeout_s=self.plan.timeout_s)
        except grpc.aio.AioRpcError as exc:  # the backend failed, refused or timed out: a failed outcome
            c.timeouts += _timed_out(exc)
            return server, False, explored
        except LoadwardenError:  # no server to route to
            c.unrouted += 1
            return "", False, False
        return server, True, explored

    async def _slot_request(self) -> tuple[str, bool]:
        c = self._counters
        server = ""
        try:
            async with self._client.slot(self.plan.pool, wait_s=self.plan.slot_wait_s, select_server=True) as lease:
                c.fallbacks += lease.fallback
                if lease.address and lease.server_id:
                    server, address = lease.server_id, lease.address
                else:
                    server, address = self._backends.round_robin()
                await self._backends.call(address, timeout_s=self.plan.timeout_s)
        except (SlotDenied, ResourceExhaustedError):
            c.rejected += 1
            return "", False
        except grpc.aio.AioRpcError as exc:
            c.timeouts += _timed_out(exc)
            return server, False
        except LoadwardenError:
            c.unrouted += 1
            return "", False
        return server, True

    def _finished(self) -> None:
        self._counters.done += 1
        if self._progress is not None:
            self._progress(self._counters.done)
