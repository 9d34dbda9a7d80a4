"""The seed's traffic generator: open-loop Poisson arrivals through the proxy, the same for every strategy.

Arrival times come from a seeded generator, so each strategy's run sees the same
schedule. Each arrival is its own task (an open loop: a slow answer does not
delay the next request), bounded by ``max_in_flight``; an arrival over the bound
is counted as dropped and not sent.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


def arrival_times(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, duration_s), seconds from the start."""
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate_per_s)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_per_s)
    return times


@dataclass
class TrafficResult:
    """What the clients saw.

    Attributes:
        sent: Requests sent, count.
        statuses: Answers by HTTP status ("error" when none came), count.
        dropped: Arrivals not sent (``max_in_flight`` reached), count.
        request_ids: The ids sent, in arrival order.
        wall_s: From the first arrival to the last answer, seconds.
    """

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    request_ids: list[str] = field(default_factory=list)
    wall_s: float = 0.0


class TrafficGenerator:
    """Sends ``GET {proxy}/api/work`` at the planned times.

    Args:
        proxy_url: The proxy's base URL.
        timeout_s: Client timeout per request, seconds (above the proxy's own, so the
            proxy's 504 is what the client sees).
        max_in_flight: Requests outstanding at most.
    """

    def __init__(self, proxy_url: str, timeout_s: float, max_in_flight: int = 2_000) -> None:
        self._url = f"{proxy_url}/api/work"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_in_flight = max_in_flight

    async def run(self, times: list[float]) -> TrafficResult:
        """Sends one request per arrival time; returns when every answer is in."""
        result = TrafficResult()
        in_flight: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, timeout=self._timeout) as session:
            start = time.perf_counter()
            for at in times:
                delay = start + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(in_flight) >= self._max_in_flight:
                    result.dropped += 1
                    continue
                request_id = uuid.uuid4().hex
                result.request_ids.append(request_id)
                result.sent += 1
                task = asyncio.create_task(self._one(session, request_id, result))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(set(in_flight))
            result.wall_s = time.perf_counter() - start
        return result

    async def _one(self, session: aiohttp.ClientSession, request_id: str, result: TrafficResult) -> None:
        try:
            async with session.get(self._url, headers={"X-Request-ID": request_id}) as answer:
                await answer.read()
                result.statuses[str(answer.status)] += 1
        except (aiohttp.ClientError, TimeoutError):
            result.statuses["error"] += 1
