"""The seed's metrics collector: polls every backend's ``GET /health`` and reports the load to loadwarden.

Every ``interval_s`` it asks all backends at once, keeps each answer as a
`HealthSample` (the seed's ``server_metrics``), and pushes the answers to the
current pool in one ``ReportLoad`` call (`AsyncClient.report_loads`): CPU %,
active requests and average response time are the figures the Q-learning
strategy encodes its state from (level 0/1/2 by the thresholds 50/80 %, 5/10
requests, 100/200 ms). A backend that does not answer is logged ``unreachable``
and not reported; its last report goes stale after the pool's TTL, and a stale
server is at level 2, as the seed says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import NamedTuple

import aiohttp

from loadwarden.sdk import AsyncClient, LoadReport, LoadwardenError

log = logging.getLogger("seed002.collector")
HEALTH_TIMEOUT_S = 0.5  # bound of one /health request, seconds


class HealthSample(NamedTuple):
    """One backend's ``/health`` answer (or its absence).

    Attributes:
        strategy: Strategy whose run was going on.
        time_s: When it was asked, seconds since the run started.
        server: Backend id.
        cpu_percent: Share of its workers busy, percent (0 when unreachable).
        active_requests: Requests in service plus queued, count.
        avg_response_time_ms: Mean response time over its recent window, ms.
        status: "healthy", "degraded", "unhealthy", or "unreachable".
    """

    strategy: str
    time_s: float
    server: str
    cpu_percent: float
    active_requests: int
    avg_response_time_ms: float
    status: str


class MetricsCollector:
    """Polls ``/health`` of `backends` ({id: "host:port"}) and reports to the current pool.

    Args:
        client: The loadwarden client (the caller's).
        backends: Server id -> address, in pool order.
        interval_s: Polling interval, seconds (the seed's default: 1).
    """

    def __init__(self, client: AsyncClient, backends: dict[str, str], interval_s: float = 1.0) -> None:
        self._client = client
        self._backends = dict(backends)
        self.interval_s = interval_s
        self.pool = ""
        self.strategy = ""
        self._started = time.perf_counter()
        self.samples: list[HealthSample] = []
        self.reports_applied = 0
        self.report_failures = 0
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def use(self, pool: str, strategy: str) -> None:
        """Reports to `pool` from now on; restarts the clock (samples are kept, labelled)."""
        self.pool, self.strategy = pool, strategy
        self._started = time.perf_counter()

    async def poll_once(self) -> list[HealthSample]:
        """Asks every backend once and reports what answered; returns the samples."""
        assert self._session is not None
        asked = time.perf_counter() - self._started
        samples = await asyncio.gather(*(self._ask(sid, addr, asked) for sid, addr in self._backends.items()))
        self.samples += samples
        reports = [
            LoadReport(
                pool=self.pool,
                server_id=s.server,
                cpu_percent=s.cpu_percent,
                active_requests=s.active_requests,
                mean_latency_ms=s.avg_response_time_ms,
            )
            for s in samples
            if s.status != "unreachable"
        ]
        if self.pool and reports:
            try:
                self.reports_applied += await self._client.report_loads(reports)
            except LoadwardenError as err:  # the service is away: the next poll tries again
                self.report_failures += 1
                log.warning("reporting load to %s failed: %s", self.pool, err)
        return samples

    async def _ask(self, server: str, address: str, asked: float) -> HealthSample:
        assert self._session is not None
        try:
            async with self._session.get(f"http://{address}/health") as answer:
                answer.raise_for_status()
                body = await answer.json()
            return HealthSample(
                self.strategy,
                asked,
                server,
                float(body["cpu_percent"]),
                int(body["active_requests"]),
                float(body["avg_response_time_ms"]),
                str(body["status"]),
            )
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as err:
            log.warning("GET /health of %s failed: %s", server, err)
            return HealthSample(self.strategy, asked, server, 0.0, 0, 0.0, "unreachable")

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self.poll_once()
            await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))

    async def start(self) -> None:
        """Starts polling in the background (the first poll at once)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S))
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
