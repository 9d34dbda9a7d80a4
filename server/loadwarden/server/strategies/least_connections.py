"""Least connections: the server with the fewest in-flight requests per unit of weight.

Ties are broken uniformly at random (seeded), so equal servers share the load
instead of the first one in the list taking every tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext


@dataclass(frozen=True, slots=True)
class LeastConnectionsParams:
    """Least connections takes no parameters."""


class LeastConnections(StrategyBase):
    """Picks the minimum of ``in_flight / weight``."""

    name = "least_connections"
    Params = LeastConnectionsParams

    def __init__(self, params: LeastConnectionsParams, context: StrategyContext) -> None:
        self._rng = context.rng

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        best = candidates[0]
        best_cost = best.in_flight / best.effective_weight
        ties = 1
        for server in candidates[1:]:
            cost = server.in_flight / server.effective_weight
            if cost < best_cost:
                best, best_cost, ties = server, cost, 1
            elif cost == best_cost:
                ties += 1
                # Reservoir sampling: each tied server ends up chosen with probability 1/ties.
                if self._rng.random() * ties < 1.0:
                    best = server
        return Choice(best)
