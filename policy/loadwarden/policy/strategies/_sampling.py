"""Sampling and tie-breaking shared by the strategies that compare a few candidates."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .._model import Backend

MIN_CHOICE_COUNT = 2
MAX_CHOICE_COUNT = 16


def check_choice_count(choice_count: int) -> None:
    """Raises ValueError("choice_count: ...") outside 2-16."""
    if not MIN_CHOICE_COUNT <= choice_count <= MAX_CHOICE_COUNT:
        raise ValueError(f"choice_count: must be {MIN_CHOICE_COUNT}-{MAX_CHOICE_COUNT}, got {choice_count}")


def sample_distinct(candidates: Sequence[Backend], k: int, rng: random.Random) -> list[Backend]:
    """``k`` distinct candidates drawn uniformly (all of them when there are at most ``k``).

    Floyd's algorithm: exactly ``k`` draws of ``rng.randrange`` and ``k`` item
    reads, whatever ``len(candidates)`` is.
    """
    n = len(candidates)
    if n <= k:
        return list(candidates)
    if k == 2:  # the common case, unrolled: the same two draws and the same answer as the loop
        first = rng.randrange(n - 1)
        second = rng.randrange(n)
        return [candidates[first], candidates[n - 1 if second == first else second]]
    picked: dict[int, None] = {}  # an insertion-ordered set, so equal seeds give equal samples
    for j in range(n - k, n):
        t = rng.randrange(j + 1)
        picked[j if t in picked else t] = None
    return [candidates[i] for i in picked]


# A weighted sample's reference weight jumps to a higher weight drawn at once and moves this
# far towards each lower one: it follows the highest weights drawn lately (a peak-following
# average, as peak_ewma's latency), the pool's highest when that server is drawn often, else
# a high quantile.
REFERENCE_DECAY = 1.0 / 64
# Share of the reference's draw rate no server falls below, however low its weight: one whose
# weight fell to 0 (failing everything) is still tried now and then, so its recovery is seen.
MIN_SHARE = 1.0 / 16
# Uniform draws per candidate at most; past them the heaviest one drawn is taken.
MAX_DRAWS = 8


class WeightedSampler:
    """Distinct candidates drawn in proportion to a weight read from each (a capacity).

    Uniform random choices in a pool whose servers differ several-fold land both on slow
    ones often enough to overload them whatever the comparison: with a fraction ``f`` of
    the servers holding a share ``s`` of the capacity, about ``f**2`` of the decisions see
    only those, more than they can take once the load exceeds ``s / f**2`` (8 servers at
    speed 1 and 2 at speed 4: 28/45 of the pairs for half the capacity, so from 80 %).
    Drawn in proportion to capacity, they see only those in about ``s**2`` of the
    decisions, below their share at any load.

    Rejection sampling keeps the cost O(k) whatever the pool's size: a uniform draw is
    kept with probability ``weight / reference`` (at least ``MIN_SHARE``), ``reference``
    following the highest weights drawn (``REFERENCE_DECAY``); after ``MAX_DRAWS`` draws
    for one candidate the heaviest of them is taken. A weight of None (unknown yet) is
    kept at once, as a uniform draw would be. Each instance keeps its own reference, so
    equal seeds give equal samples.
    """

    __slots__ = ("reference",)

    def __init__(self) -> None:
        self.reference = 0.0

    def sample(
        self, candidates: Sequence[Backend], k: int, rng: random.Random, weight: Callable[[Backend], float | None]
    ) -> list[Backend]:
        """``k`` distinct candidates (all of them when there are at most ``k``)."""
        n = len(candidates)
        if n <= k:
            return list(candidates)
        picked: dict[int, Backend] = {}  # insertion-ordered, so equal seeds give equal samples
        reference = self.reference
        for _ in range(k):
            chosen: Backend | None = None
            at, heaviest = -1, -1.0
            for _ in range(MAX_DRAWS):
                i = rng.randrange(n)
                if i in picked:
                    continue
                server = candidates[i]
                w = weight(server)
                if w is None or w >= reference:
                    if w is not None:
                        reference = w
                    chosen, at = server, i
                    break
                kept = rng.random() * reference < max(w, MIN_SHARE * reference)
                reference += (w - reference) * REFERENCE_DECAY
                if kept:
                    chosen, at = server, i
                    break
                if w > heaviest:
                    chosen, at, heaviest = server, i, w
            if chosen is None:  # every draw hit a candidate picked already (n barely above k)
                at = next(i for i in range(n) if i not in picked)
                chosen = candidates[at]
            picked[at] = chosen
        self.reference = reference
        return list(picked.values())


def least_cost(servers: Sequence[Backend], costs: list[float], rng: random.Random) -> Backend:
    """The server of lowest cost (``costs[i]`` is ``servers[i]``'s); ties broken uniformly at random.

    ``min``, ``count`` and ``index`` run in C, so a scan of thousands of costs
    stays cheap; the RNG is drawn from only when there is a tie.
    """
    if len(costs) == 2:  # p2c's pair, unrolled: the same answer and the same draw as below
        a, b = costs
        if a != b:
            return servers[0] if a < b else servers[1]
        return servers[rng.randrange(2)]
    best_cost = min(costs)
    if costs.count(best_cost) == 1:
        return servers[costs.index(best_cost)]
    ties = [server for server, c in zip(servers, costs, strict=True) if c == best_cost]
    return ties[rng.randrange(len(ties))]


def overdue_load(server: Backend, now: float) -> float:
    """Evidence against ``server`` in requests' worth: how long its requests in flight have
    gone without a successful answer, in units of its usual latency (the outcome EWMA), once
    that is over ``OVERDUE_FACTOR`` of them; 0 otherwise. A server that turned very slow
    weighs this much more at once, before any of its requests completes or times out."""
    usual = server.usual_latency_ms
    overdue = server.overdue_ms(now, usual)
    return overdue / usual if overdue else 0.0
