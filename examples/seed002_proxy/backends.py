"""The seed's backend servers: aiohttp apps that serve ``/work`` slowly and answer ``/health``.

Each backend serves at most ``workers`` requests at once; the rest queue (FIFO), so
a backend sent more than it can serve builds a queue and its latency grows. A
request's service time is ``base_delay_ms / speed`` times an exponential draw of
mean 1 from the backend's seeded generator. ``GET /health`` answers the seed's
metrics:

- ``cpu_percent``: busy workers / workers x 100, averaged since the previous
  ``/health`` answer. The backends sleep instead of computing, and several share one
  process, so the host's CPU (the seed's psutil figure) would say nothing about
  any one of them; the share of its capacity in use is what CPU % stands for.
- ``active_requests``: requests in service plus queued, right now.
- ``avg_response_time_ms``: mean time from arrival to answer of the requests
  completed in the last ``RESPONSE_WINDOW_S`` seconds; 0 when none.
- ``status``: ``healthy``, ``degraded`` or ``unhealthy`` (see ``health_status``).

Requests whose client went away (the proxy's timeout) are cancelled, queued or
not, so an abandoned request holds no worker.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass

from aiohttp import web

RESPONSE_WINDOW_S = 5.0  # window of avg_response_time_ms, seconds
DEGRADED_CPU_PERCENT = 80.0  # from here a backend is "degraded" (the seed's high CPU threshold)
DEGRADED_RESPONSE_MS = 200.0  # ... or from this mean response time (the seed's high threshold), ms
UNHEALTHY_QUEUE_PER_WORKER = 4  # "unhealthy" once this many requests per worker wait
UNHEALTHY_RESPONSE_MS = 1_000.0  # ... or from this mean response time, ms


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One backend of the experiment.

    Attributes:
        id: Server id in the loadwarden pools, e.g. "server1".
        speed: Relative speed (> 0): mean service time is ``base_delay_ms / speed``.
        workers: Requests served at once (>= 1); more wait in a FIFO queue.
    """

    id: str
    speed: float
    workers: int

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed: must be > 0, got {self.speed!r}")
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers!r}")

    def capacity_per_s(self, base_delay_ms: float) -> float:
        """Requests per second the backend completes when always busy."""
        return self.workers * self.speed * 1000.0 / base_delay_ms


def health_status(cpu_percent: float, active_requests: int, workers: int, avg_response_time_ms: float) -> str:
    """``unhealthy`` when ``UNHEALTHY_QUEUE_PER_WORKER`` requests per worker wait or the mean
    response reaches ``UNHEALTHY_RESPONSE_MS``; ``degraded`` from the seed's high thresholds
    (CPU 80 %, 200 ms); else ``healthy``."""
    queued = max(0, active_requests - workers)
    if queued >= UNHEALTHY_QUEUE_PER_WORKER * workers or avg_response_time_ms >= UNHEALTHY_RESPONSE_MS:
        return "unhealthy"
    if cpu_percent >= DEGRADED_CPU_PERCENT or avg_response_time_ms >= DEGRADED_RESPONSE_MS:
        return "degraded"
    return "healthy"


class Backend:
    """One simulated backend's state and handlers; `start` serves it on 127.0.0.1.

    Time is ``time.monotonic`` (the backend measures real waits); randomness is the
    backend's own ``random.Random``, reseeded by `reset` so every strategy's run draws
    the same service times in the same order.
    """

    def __init__(self, spec: BackendSpec, base_delay_ms: float, seed: int) -> None:
        self.spec = spec
        self.base_delay_ms = base_delay_ms
        self._workers = asyncio.Semaphore(spec.workers)
        self._rng = random.Random(seed)
        self._active = 0  # in service plus queued
        self._busy = 0  # in service
        self._busy_s = 0.0  # busy worker-seconds since start, up to _changed_at
        self._changed_at = time.monotonic()
        self._health_at = self._changed_at
        self._health_busy_s = 0.0
        self._done: deque[tuple[float, float]] = deque()  # (completed at, response ms), last RESPONSE_WINDOW_S
        self.served = 0
        self._runner: web.AppRunner | None = None
        self.address = ""

    def reset(self, seed: int) -> None:
        """Starts a new run: reseeds the service times and forgets the response window."""
        self._rng.seed(seed)
        self._done.clear()
        self.served = 0

    @property
    def active_requests(self) -> int:
        return self._active

    def _account(self, busy_delta: int) -> None:
        now = time.monotonic()
        self._busy_s += self._busy * (now - self._changed_at)
        self._changed_at = now
        self._busy += busy_delta

    async def work(self, request: web.Request) -> web.Response:
        """Queues for a worker, then takes its service time; answers what it did."""
        arrived = time.monotonic()
        self._active += 1
        try:
            async with self._workers:
                self._account(+1)
                try:
                    service_ms = self.base_delay_ms / self.spec.speed * self._rng.expovariate(1.0)
                    await asyncio.sleep(service_ms / 1000.0)
                finally:
                    self._account(-1)
        finally:
            self._active -= 1
        done = time.monotonic()
        response_ms = (done - arrived) * 1000.0
        self._done.append((done, response_ms))
        self.served += 1
        return web.json_response(
            {
                "server": self.spec.id,
                "request_id": request.headers.get("X-Request-ID", ""),
                "service_ms": round(service_ms, 3),
                "response_ms": round(response_ms, 3),
            }
        )

    def metrics(self) -> dict[str, object]:
        """The seed's health metrics now (see the module docstring); resets the CPU interval."""
        self._account(0)
        now = self._changed_at
        elapsed = now - self._health_at
        cpu = 0.0 if elapsed <= 0 else (self._busy_s - self._health_busy_s) / (elapsed * self.spec.workers) * 100.0
        self._health_at, self._health_busy_s = now, self._busy_s
        while self._done and self._done[0][0] < now - RESPONSE_WINDOW_S:
            self._done.popleft()
        avg = sum(ms for _, ms in self._done) / len(self._done) if self._done else 0.0
        cpu = min(100.0, max(0.0, cpu))
        return {
            "server": self.spec.id,
            "cpu_percent": round(cpu, 2),
            "active_requests": self._active,
            "avg_response_time_ms": round(avg, 3),
            "status": health_status(cpu, self._active, self.spec.workers, avg),
        }

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(self.metrics())

    async def start(self) -> str:
        """Serves the backend on a free port of 127.0.0.1; returns its "host:port"."""
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/{tail:.*}", self.work)
        # handler_cancellation: a request whose client disconnected stops queueing or sleeping.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self.address = f"{host}:{port}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
