"""The service host's own load, sampled with psutil off the event loop, for batch sizing.

The score itself (`host_score`, `pool_reading`) is the kernel's, in loadwarden.policy:
its formula, and why an unknown load is never read as idle, are documented there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import psutil

from loadwarden.policy import Clock, HostSample, LoadReading, LoadWeights, host_score

log = logging.getLogger("loadwarden.server")


def psutil_sample() -> HostSample:
    """Blocking: CPU % since the previous call, memory %, load average per core."""
    cores = os.cpu_count() or 1
    return HostSample(
        cpu_percent=float(psutil.cpu_percent(interval=None)),
        memory_percent=float(psutil.virtual_memory().percent),
        load_average_percent=min(100.0, psutil.getloadavg()[0] / cores * 100.0),
    )


class HostMonitor:
    """Samples the host every ``interval_s`` in a worker thread, never on the event loop.

    The reading is unknown when the last sample failed, or when no sample
    succeeded within ``stale_after_s`` (a stuck sampler is not an idle host).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        interval_s: float = 1.0,
        weights: LoadWeights | None = None,
        sampler: Callable[[], HostSample] = psutil_sample,
        stale_after_s: float | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s: must be > 0")
        self.clock = clock
        self.interval_s = interval_s
        self.weights = weights or LoadWeights()
        self.stale_after_s = stale_after_s if stale_after_s is not None else 3 * interval_s
        self._sampler = sampler
        self.sample: HostSample | None = None
        self.sampled_at: float | None = None  # monotonic
        self.sampled_wall: float | None = None
        self.error = ""
        self.samples_total = 0  # successful samples

    def sample_now(self) -> None:
        """Takes one sample (blocking). A failure is recorded, not raised."""
        try:
            sample = self._sampler()
        except Exception as exc:  # noqa: BLE001 - psutil can fail in many platform-specific ways
            if not self.error:
                log.warning("host load monitor failed: %s", exc)
            self.error = f"host load monitor failed: {exc}"
            return
        if self.error:
            log.info("host load monitor recovered")
        self.sample, self.error = sample, ""
        self.sampled_at, self.sampled_wall = self.clock.monotonic(), self.clock.wall()
        self.samples_total += 1

    def reading(self, now: float) -> LoadReading:
        if self.error:
            return LoadReading(None, self.error)
        if self.sample is None or self.sampled_at is None:
            return LoadReading(None, "host load monitor has no sample yet")
        age = now - self.sampled_at
        if age > self.stale_after_s:
            return LoadReading(None, f"host load sample is {age:.1f} s old (stale after {self.stale_after_s:.1f} s)")
        return LoadReading(host_score(self.sample, self.weights))

    async def run(self) -> None:
        """Samples forever; cancel to stop."""
        while True:
            await asyncio.to_thread(self.sample_now)
            await asyncio.sleep(self.interval_s)
