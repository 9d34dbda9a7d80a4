"""Power of d choices: least request over a few random candidates.

Each decision samples ``choice_count`` distinct candidates uniformly at random
and takes the one with the lowest ``(active_requests + 1) / effective_weight``,
the load it would carry per unit of weight with this request added. Comparing two
random servers instead of all of them avoids the herd that full least-request
sends to whichever server looks idlest, and still shrinks the maximum load
exponentially compared with one random choice (Mitzenmacher, "The Power of Two
Choices in Randomized Load Balancing", IEEE TPDS 12(10), 2001). This is Envoy's
``LEAST_REQUEST`` policy with its default ``choice_count`` 2 and
``active_request_bias`` 1.

A decision costs O(choice_count): the sample is drawn by index (Floyd's
algorithm), never by walking or shuffling the candidate list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext

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


@dataclass(frozen=True, slots=True)
class P2CParams:
    """Parameters of ``p2c``.

    Attributes:
        choice_count: Distinct random candidates compared per decision, 2-16.
            With fewer eligible servers than this, all of them are compared.
    """

    choice_count: int = 2

    def __post_init__(self) -> None:
        check_choice_count(self.choice_count)


class P2C(StrategyBase):
    """Least ``(active_requests + 1) / effective_weight`` among ``choice_count`` random candidates.

    The ids of the sampled candidates go back as ``Choice.memo``, so a decision
    can be checked against the alternatives it was compared with.
    """

    name = "p2c"
    Params = P2CParams

    def __init__(self, params: P2CParams, context: StrategyContext) -> None:
        self._choice_count = params.choice_count
        self._rng = context.rng

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        sampled = sample_distinct(candidates, self._choice_count, self._rng)
        # Counting the request being placed keeps weights meaningful when every server is idle.
        costs = [(s.active_requests + 1) / s.effective_weight for s in sampled]
        return Choice(least_cost(sampled, costs, self._rng), memo=tuple(s.id for s in sampled))
