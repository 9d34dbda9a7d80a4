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
    picked: dict[int, None] = {}  # an insertion-ordered set, so equal seeds give equal samples
    for j in range(n - k, n):
        t = rng.randrange(j + 1)
        picked[j if t in picked else t] = None
    return [candidates[i] for i in picked]


def least_cost(servers: Sequence[Backend], costs: Sequence[float], rng: random.Random) -> Backend:
    """The server of lowest cost (``costs[i]`` is ``servers[i]``'s); ties broken uniformly at random."""
    best = servers[0]
    best_cost = costs[0]
    ties = 1
    for server, c in zip(servers[1:], costs[1:]):
        if c < best_cost:
            best, best_cost, ties = server, c, 1
        elif c == best_cost:
            ties += 1
            # Reservoir sampling: each tied server ends up chosen with probability 1/ties.
            if rng.random() * ties < 1.0:
                best = server
    return best
