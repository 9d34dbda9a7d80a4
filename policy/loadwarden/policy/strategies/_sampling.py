"""Sampling and tie-breaking shared by the strategies that compare a few candidates."""

from __future__ import annotations

import random
from collections.abc import Sequence

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
