"""Peak EWMA: power of d choices on latency times load.

Each decision draws ``choice_count`` distinct candidates and takes the lowest
``latency_ms * (in_flight + 1) / effective_weight``, where ``latency_ms`` is a
per-server moving average that is hyper-sensitive to peaks: a sample above the
average replaces it at once, a lower one pulls it down with weight
``1 - exp(-elapsed_s / decay_s)`` (elapsed since that server's previous sample),
so a server that turns slow loses traffic on its first slow answer and regains it
only gradually. This is Finagle's ``PeakEwma`` balancer (Twitter, 2014) as later
adopted by Linkerd and tower's ``peak_ewma`` load.

Candidates are drawn in proportion to ``effective_weight / latency_ms`` (the server's
capacity as its latency shows it, ``WeightedSampler``), where Finagle draws them
uniformly: latency times load already ranks a slow server below a fast one, but in a
pool whose speeds differ several-fold two uniform draws both land on slow servers
often enough to overload them whatever the ranking. A server without an estimate
yet is drawn as often as the heaviest.

As in Finagle and tower, the average a decision reads is decayed towards 0 by the
time since the server's last sample (not stored): a server that stopped getting
traffic after a spike looks better and better (and is drawn more and more often) until
it is probed again.

Failures and expired decisions count as at least ``failure_penalty_ms``, so a
server that fails fast does not look fast.

A client deciding locally prices servers by the latencies it measures itself and
takes the service's estimate where that is higher or where it has none (``adopt``).

A server without samples yet is priced at ``default_rtt_ms`` when that is set.
By default (0) it borrows the median estimate of the servers it was sampled
with: a new server then competes on in-flight requests alone, so it is tried at
once but takes no more than its share until its own answers arrive. A fixed
guess would flood it (guess below the pool's latency) or starve it (above).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._model import Backend
from ._base import Choice, Feedback, StrategyBase, StrategyContext
from ._sampling import WeightedSampler, check_choice_count, least_cost
from ._state import SNAPSHOT_VERSION, read_float, read_mapping, read_server_id, snapshot_body

# Estimates are read as at least 1 µs, so cost still grows with in_flight when latencies read 0 ms.
_MIN_ESTIMATE_MS = 0.001


@dataclass(frozen=True, slots=True)
class PeakEwmaParams:
    """Parameters of ``peak_ewma``.

    Attributes:
        choice_count: Distinct random candidates compared per decision, 2-16.
        decay_ms: Time constant of the average, > 0: a sample ``decay_ms`` after
            the previous one moves the average 63 % of the way to it.
        failure_penalty_ms: Latency a failed or expired decision counts as at
            least, >= 0; 0 counts the reported latency as it is.
        default_rtt_ms: Estimate for servers without samples, >= 0; 0 borrows
            the median estimate of the other sampled servers.
    """

    choice_count: int = 2
    decay_ms: float = 10_000.0
    failure_penalty_ms: float = 1_000.0
    default_rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        check_choice_count(self.choice_count)
        if not (math.isfinite(self.decay_ms) and self.decay_ms > 0):
            raise ValueError(f"decay_ms: must be a finite number > 0, got {self.decay_ms}")
        for name in ("failure_penalty_ms", "default_rtt_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")


class PeakEwma(StrategyBase):
    """Least ``peak_ewma_latency * (in_flight + 1) / effective_weight`` among candidates drawn
    in proportion to ``effective_weight / peak_ewma_latency``.

    Keeps one ``(average ms, monotonic s of the last sample)`` per server of the
    pool that has had a sample; feedback for a server no longer in the pool's
    live map is ignored, so ``forget`` is final. ``Choice.memo`` holds the ids of
    the sampled candidates.
    """

    name = "peak_ewma"
    Params = PeakEwmaParams

    def __init__(self, params: PeakEwmaParams, context: StrategyContext) -> None:
        self._params = params
        self._decay_s = params.decay_ms / 1000.0
        self._clock = context.clock
        self._rng = context.rng
        self._servers = context.servers
        self._ewma: dict[str, tuple[float, float]] = {}
        self._seeded: set[str] = set()  # servers whose entry came from adopt(), not a sample
        self._sampler = WeightedSampler()

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        now = self._clock.monotonic()

        def capacity(server: Backend) -> float | None:
            estimate = self._estimate(server.id, now)
            return None if estimate is None else server.effective_weight / max(estimate, _MIN_ESTIMATE_MS)

        sampled = self._sampler.sample(candidates, self._params.choice_count, self._rng, capacity)
        estimates = [self._estimate(s.id, now) for s in sampled]
        prior = self._prior(estimates) if None in estimates else 0.0
        costs = []
        for s, e in zip(sampled, estimates, strict=True):
            estimate = max(prior if e is None else e, _MIN_ESTIMATE_MS)
            # Requests in flight long past the estimate are a latency already measured, in part.
            estimate = max(estimate, s.overdue_ms(now, estimate))
            costs.append(estimate * (s.in_flight_total + 1) / s.effective_weight)
        return Choice(least_cost(sampled, costs, self._rng), False, tuple([s.id for s in sampled]))

    def observe(self, feedback: Feedback) -> None:
        server = feedback.server
        if self._servers.get(server.id) is not server:
            return
        latency = feedback.latency_ms
        if not feedback.success or feedback.expired:
            latency = max(latency, self._params.failure_penalty_ms)
        now = self._clock.monotonic()
        entry = self._ewma.get(server.id)
        if server.id in self._seeded:  # the first own sample replaces the seed
            self._seeded.discard(server.id)
            entry = None
        if entry is None or latency >= entry[0]:
            self._ewma[server.id] = (latency, now)
            return
        ewma, at = entry
        w = 1.0 - math.exp(-(now - at) / self._decay_s)
        self._ewma[server.id] = (ewma + w * (latency - ewma), now)

    def forget(self, server_id: str) -> None:
        self._ewma.pop(server_id, None)
        self._seeded.discard(server_id)

    # --- deciding in the client ------------------------------------------------------

    def published(self) -> dict[str, Any]:
        """Each tracked server's estimate now, milliseconds: seeds for clients' own averages."""
        now = self._clock.monotonic()
        estimates = {sid: self._estimate(sid, now) for sid in self._ewma}
        return {"strategy": self.name, "version": SNAPSHOT_VERSION, "estimates": estimates}

    def adopt(self, published: Mapping[str, Any]) -> None:
        """What a client takes from the service's estimates (every client's samples, a push
        old): a seed for each server it has no own sample of (its first own sample replaces
        it), and any estimate higher than its own, as if it were a peak it measured. A slow
        server one client found is then avoided by all of them from the next table on, not
        found out again by each (simulated on ``one-slow``, 3 clients, 10 seeds: local
        success -0.13 point of central's with seeds only, -0.01 with the higher estimates;
        docs/local-decisions-quality.md). A lower one leaves the client's own: its own
        samples pull it down as they do."""
        body = snapshot_body(published, self.name, ("estimates",))
        estimates = {
            read_server_id(sid, "estimates"): read_float(ms, f"estimates[{sid!r}]", 0.0, 86_400_000.0)
            for sid, ms in read_mapping(body["estimates"], "estimates").items()
        }
        now = self._clock.monotonic()
        for sid, ms in estimates.items():
            if sid not in self._servers:
                continue
            if sid in self._seeded or sid not in self._ewma:
                self._ewma[sid] = (ms, now)
                self._seeded.add(sid)
            elif ms > (self._estimate(sid, now) or 0.0):
                self._ewma[sid] = (ms, now)

    def finished(self, feedback: Feedback) -> None:
        """A client learns the latencies it measured itself."""
        self.observe(feedback)

    def stats(self) -> dict[str, float]:
        return {"tracked_servers": float(len(self._ewma))}

    def _estimate(self, server_id: str, now: float) -> float | None:
        entry = self._ewma.get(server_id)
        if entry is None:
            return None
        ewma, at = entry
        return ewma * math.exp(-(now - at) / self._decay_s)

    def _prior(self, estimates: list[float | None]) -> float:
        if self._params.default_rtt_ms > 0:
            return self._params.default_rtt_ms
        known = [e for e in estimates if e is not None]
        # With no sampled server known, any positive value ranks them by in_flight / weight.
        return statistics.median(known) if known else 1.0
