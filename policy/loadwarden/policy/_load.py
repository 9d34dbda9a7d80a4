"""Load scores for batch sizing, from a host sample or a pool's reported load.

Load score, percent 0-100:

    score = (w_cpu * cpu% + w_memory * memory% + w_load * load_average%) / (w_cpu + w_memory + w_load)

where ``load_average%`` is the 1-minute load average divided by the number of
cores, times 100, capped at 100. A pool's score uses the same weights over each
server's reported CPU and memory (no load average there), averaged over the
servers whose report is fresh.

An unknown load is never read as idle: a failing or stale host monitor, or a pool
with no fresh report, gives a reading with ``score`` None and the reason why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._pool import Pool


@dataclass(frozen=True, slots=True)
class LoadWeights:
    """Weights of the load score's parts (>= 0, not all 0)."""

    cpu: float = 0.6
    memory: float = 0.2
    load_average: float = 0.2

    def __post_init__(self) -> None:
        for name in ("cpu", "memory", "load_average"):
            value = getattr(self, name)
            if not (0.0 <= value < math.inf):
                raise ValueError(f"weights.{name}: must be a finite number >= 0, got {value!r}")
        if self.cpu + self.memory + self.load_average <= 0:
            raise ValueError("weights: at least one weight must be > 0")


@dataclass(frozen=True, slots=True)
class HostSample:
    """One psutil reading, percentages 0-100."""

    cpu_percent: float
    memory_percent: float
    load_average_percent: float


@dataclass(frozen=True, slots=True)
class LoadReading:
    """A load score, or None with the reason it is unknown."""

    score: float | None
    problem: str = ""


def host_score(sample: HostSample, weights: LoadWeights) -> float:
    total = weights.cpu + weights.memory + weights.load_average
    value = (
        weights.cpu * sample.cpu_percent
        + weights.memory * sample.memory_percent
        + weights.load_average * sample.load_average_percent
    ) / total
    return min(100.0, max(0.0, value))


def pool_reading(pool: Pool[Any], now: float, weights: LoadWeights) -> LoadReading:
    """Mean score over the pool's servers with a fresh load report."""
    part = weights.cpu + weights.memory
    if part <= 0:
        return LoadReading(None, "the load weights give CPU and memory no weight, and pools report no load average")
    scores = []
    for server in pool.servers.values():
        if server.load is None or server.is_stale(now, pool.settings.load_report_ttl_ms / 1000.0, True):
            continue
        load = server.load
        scores.append((weights.cpu * load.cpu_percent + weights.memory * load.memory_percent) / part)
    if not scores:
        return LoadReading(
            None, f"no server of pool {pool.name!r} reported its load within {pool.settings.load_report_ttl_ms} ms"
        )
    return LoadReading(sum(scores) / len(scores))
