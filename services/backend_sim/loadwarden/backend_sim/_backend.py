"""A simulated backend behind real gRPC: FIFO workers, drawn service times, schedules.

``SimulatedBackend`` is the domain object (no gRPC): ``workers`` requests are
served at once, the rest wait in one FIFO queue, each holds its worker for a
service time drawn from the backend's distribution (mean
``SimServer.mean_service_ms(t)``, t = seconds since the backend began), and a
request drawn to fail fails after its service time. ``BackendServicer`` only
translates it to ``loadwarden.v1.SimulatedBackendService``; ``start_backend``
serves it with ``grpc.health.v1.Health`` and reflection on its own port and, given a client,
pushes its load with the SDK's ``BackendReporter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]  # no stubs, no py.typed

from loadwarden.sdk import AsyncClient, BackendReporter
from loadwarden.server.rpc.reflection import enable_reflection
from loadwarden.v1 import backend_sim_pb2 as _pb
from loadwarden.v1 import backend_sim_pb2_grpc as _pb_grpc

from ._config import SimServer

_log = logging.getLogger("loadwarden.backend_sim")

SERVICE_NAME = _pb.DESCRIPTOR.services_by_name["SimulatedBackendService"].full_name
# Largest batch one Handle call may carry, items.
MAX_ITEMS = 1_000_000
MAX_REQUEST_ID_LEN = 128
# Default extra service time per item beyond the first, as a fraction of one request's.
DEFAULT_ITEM_COST = 0.1

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class BackendDown(Exception):
    """The backend is in a scheduled outage: it refuses requests at once."""


class SimulatedFailure(Exception):
    """The request was drawn to fail (``failure_probability``); it took its service time."""


@dataclass(frozen=True, slots=True)
class Served:
    """How one request went through the backend.

    Attributes:
        queue_ms: Time waiting for a worker, ms.
        service_ms: Time holding a worker, ms (the drawn service time).
        items: Items served (1 for a plain request).
    """

    queue_ms: float
    service_ms: float
    items: int


class FifoWorkers:
    """``capacity`` workers, handed out strictly in arrival order.

    A released worker goes straight to the oldest waiter, so a newcomer can never
    overtake the queue. Invariants: ``busy <= capacity``; a waiter cancelled while
    queued leaves the queue, and one cancelled just after being handed a worker
    passes it on; no worker is ever lost.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity: must be an integer >= 1, got {capacity!r}")
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        """Requests waiting for a worker."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> None:
        """Waits for a worker (FIFO); the caller must ``release`` it exactly once."""
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a worker as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Gives a worker back: to the oldest waiter if any, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # ``busy`` is unchanged: the worker changes hands
                return
        self.busy -= 1


class SimulatedBackend:
    """One simulated backend's queueing and timing; no network.

    Args:
        spec: Speed, workers, service distribution, failure probability and schedule.
        rng: Draws service times and failures (seed it for repeatable draws).
        clock: Monotonic seconds; time 0 of the schedule is ``begin()`` (or construction).
        sleep: Waits a service time, seconds (``asyncio.sleep``).
        item_cost: Extra service time per item beyond the first, as a fraction of a
            request's, >= 0: n items take ``(1 + item_cost * (n - 1))`` times as long.

    Raises:
        ValueError: ``item_cost`` is negative or not a number.
    """

    def __init__(
        self,
        spec: SimServer,
        *,
        rng: random.Random,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        item_cost: float = DEFAULT_ITEM_COST,
    ) -> None:
        if isinstance(item_cost, bool) or not isinstance(item_cost, (int, float)) or not 0 <= item_cost < math.inf:
            raise ValueError(f"item_cost: must be a finite number >= 0, got {item_cost!r}")
        self.spec = spec
        self.item_cost = float(item_cost)
        self._rng = rng
        self._clock = clock
        self._sleep = sleep
        self._workers = FifoWorkers(spec.workers)
        self._origin = clock()
        # Requests holding a worker; <= spec.workers. ``max_in_service`` is its high-water mark.
        self.in_service = 0
        self.max_in_service = 0
        self.arrived = 0  # requests that entered the queue
        self.served = 0
        self.failed = 0
        self.cancelled = 0
        self.refused = 0
        # Worker-seconds spent serving since the last ``busy_fraction`` reading, up to ``_changed_at``.
        self._busy_area = 0.0
        self._changed_at = self._origin
        self._read_at = self._origin

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def queued(self) -> int:
        """Requests waiting for a worker."""
        return self._workers.queued

    def begin(self) -> None:
        """Makes now time 0 of the schedule."""
        now = self._clock()
        self._account(now)
        self._origin = now
        self._read_at = now
        self._busy_area = 0.0

    def elapsed_s(self) -> float:
        """Seconds since ``begin`` (the schedule's clock)."""
        return self._clock() - self._origin

    def is_down(self) -> bool:
        """Whether a scheduled outage is in force now."""
        phase = self.spec.phase_at(self.elapsed_s()) if self.spec.schedule else None
        return phase is not None and phase.outage

    def busy_fraction(self) -> float:
        """Mean busy workers / workers since the previous reading, 0-1 (a CPU figure of its own)."""
        now = self._clock()
        self._account(now)
        span = now - self._read_at
        busy = self._busy_area
        self._read_at, self._busy_area = now, 0.0
        if span <= 0:
            return min(1.0, self.in_service / self.spec.workers)
        return min(1.0, busy / (self.spec.workers * span))

    def service_ms(self, items: int = 1) -> float:
        """Draws the service time of a request of ``items`` items starting now, ms."""
        mean = self.spec.mean_service_ms(self.elapsed_s()) * (1.0 + self.item_cost * (items - 1))
        if self.spec.service == "constant":
            return mean
        return self._rng.expovariate(1.0 / mean)

    async def handle(self, items: int = 1) -> Served:
        """Queues for a worker, holds it for a drawn service time, and answers.

        Cancellation (the caller's deadline) takes the request out of the queue, or
        ends its service early, and frees its worker.

        Raises:
            BackendDown: A scheduled outage is in force; nothing was queued.
            SimulatedFailure: The request was drawn to fail, after its service time.
            ValueError: ``items`` is not in [1, MAX_ITEMS].
        """
        if isinstance(items, bool) or not isinstance(items, int) or not 1 <= items <= MAX_ITEMS:
            raise ValueError(f"items: must be an integer in [1, {MAX_ITEMS}], got {items!r}")
        if self.is_down():
            self.refused += 1
            raise BackendDown(f"{self.id} is in a scheduled outage")
        arrived = self._clock()
        self.arrived += 1
        try:
            await self._workers.acquire()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        started = self._clock()
        self._account(started)
        self.in_service += 1
        self.max_in_service = max(self.max_in_service, self.in_service)
        try:
            service_ms = self.service_ms(items)
            fails = self._rng.random() < self.spec.failure_probability
            await self._sleep(service_ms / 1000.0)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self._account(self._clock())
            self.in_service -= 1
            self._workers.release()
        if fails:
            self.failed += 1
            raise SimulatedFailure(f"{self.id}: simulated failure")
        self.served += 1
        return Served(queue_ms=(started - arrived) * 1000.0, service_ms=service_ms, items=items)

    def _account(self, now: float) -> None:
        # Call before ``in_service`` changes.
        self._busy_area += self.in_service * max(0.0, now - self._changed_at)
        self._changed_at = now


class BackendServicer(_pb_grpc.SimulatedBackendServiceServicer):
    """Translates Handle calls to ``SimulatedBackend.handle``; errors become status codes here.

    With a reporter, every request that enters the queue is tracked, so the
    reported active requests are queued + in service, and latency/errors are the
    backend's own.
    """

    def __init__(self, backend: SimulatedBackend, reporter: BackendReporter | None = None) -> None:
        self._backend = backend
        self._reporter = reporter

    async def Handle(  # noqa: N802 - the RPC's name
        self, request: _pb.HandleRequest, context: grpc.aio.ServicerContext
    ) -> _pb.HandleResponse:
        if len(request.request_id) > MAX_REQUEST_ID_LEN:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request_id: at most {MAX_REQUEST_ID_LEN} characters, got {len(request.request_id)}",
            )
        items = request.items or 1
        if items > MAX_ITEMS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"items: must be in [0, {MAX_ITEMS}], got {items}")
        try:
            served = await self._serve(items)
        except BackendDown as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except SimulatedFailure as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        return _pb.HandleResponse(
            server_id=self._backend.id,
            request_id=request.request_id,
            queue_ms=served.queue_ms,
            service_ms=served.service_ms,
            items=served.items,
        )

    async def _serve(self, items: int) -> Served:
        # A refused request (outage) is not tracked: it never reached a worker's queue.
        if self._reporter is None or self._backend.is_down():
            return await self._backend.handle(items)
        with self._reporter.track():  # failed when SimulatedFailure escapes; cancelled only leaves in-flight
            return await self._backend.handle(items)


class RunningBackend:
    """A backend serving on its own port, with health, schedule and (optionally) load reports.

    Built by ``start_backend``; ``begin`` starts the schedule's clock, the load
    reports and the outage watcher; ``stop`` ends everything.
    """

    def __init__(
        self,
        backend: SimulatedBackend,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        address: str,
        reporter: BackendReporter | None,
        sleep: Sleep,
    ) -> None:
        self.backend = backend
        self.server = server
        self.health = health_servicer
        self.address = address
        self.reporter = reporter
        self._sleep = sleep
        self._watcher: asyncio.Task[None] | None = None
        self._down = False

    @property
    def down(self) -> bool:
        """Whether the watcher has put the backend in an outage (health NOT_SERVING, no reports)."""
        return self._down

    async def begin(self) -> None:
        """Time 0 of the schedule is now; starts load reports and the outage watcher."""
        self.backend.begin()
        await self._apply(self.backend.is_down())
        if self.backend.spec.schedule:
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_schedule(), name=f"backend-sim-schedule-{self.backend.id}"
            )

    async def _apply(self, down: bool) -> None:
        status = health_pb2.HealthCheckResponse.NOT_SERVING if down else health_pb2.HealthCheckResponse.SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if self.reporter is not None:
            if down:
                await self.reporter.stop_async()  # a down backend sends nothing: the service sees it go stale
            else:
                self.reporter.start()
        if down != self._down:
            _log.info("backend %s %s at t=%.3f s", self.backend.id, "down" if down else "up", self.backend.elapsed_s())
        self._down = down

    async def _watch_schedule(self) -> None:
        while True:
            t = self.backend.elapsed_s()
            down = self.backend.is_down()
            if down != self._down:
                await self._apply(down)
            boundaries = [b for p in self.backend.spec.schedule for b in (p.start_s, p.end_s) if b > t]
            if not boundaries:
                return
            await self._sleep(min(boundaries) - t + 0.001)

    async def stop(self, grace_s: float | None = 0.0) -> None:
        """Stops the watcher, the reports and the server. Idempotent."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.reporter is not None:
            await self.reporter.stop_async()
        await self.server.stop(grace_s)


async def start_backend(
    spec: SimServer,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    rng: random.Random,
    client: AsyncClient | None = None,
    pool: str = "",
    report_interval_s: float = 1.0,
    item_cost: float = DEFAULT_ITEM_COST,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> RunningBackend:
    """Serves one simulated backend on ``host:port`` (0 picks a free port).

    Args:
        spec: The backend.
        host: Address to listen on.
        port: Port, 0 for any free one.
        rng: Its service-time and failure draws.
        client: Pushes the backend's load to the Decision service when given.
        pool: The backend's pool at the Decision service (with ``client``).
        report_interval_s: Time between load reports, seconds.
        item_cost: See ``SimulatedBackend``.
        clock: Monotonic seconds.
        sleep: Async sleep, seconds.

    Raises:
        OSError: The port cannot be bound.
        ValueError: ``pool`` is missing with a client, or another argument is out of range.
    """
    backend = SimulatedBackend(spec, rng=rng, clock=clock, sleep=sleep, item_cost=item_cost)
    reporter = None
    if client is not None:
        # Its own CPU figure: the busy-worker fraction (the host's would mix every backend
        # of the process); memory is not simulated.
        reporter = BackendReporter(
            client,
            pool,
            spec.id,
            interval_s=report_interval_s,
            sampler=lambda: (100.0 * backend.busy_fraction(), 0.0),
        )
    server = grpc.aio.server()
    _pb_grpc.add_SimulatedBackendServiceServicer_to_server(BackendServicer(backend, reporter), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)  # grpcurl needs no .proto
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    shown_host = f"[{host}]" if ":" in host else host
    return RunningBackend(backend, server, health_servicer, f"{shown_host}:{bound}", reporter, sleep)
