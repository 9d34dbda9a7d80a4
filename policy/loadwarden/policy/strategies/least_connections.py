"""Least connections: the server with the fewest in-flight requests per unit of weight.

Ties are broken uniformly at random (seeded), so equal servers share the load
instead of the first one in the list taking every tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext
from ._sampling import least_cost


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
        costs = [server.in_flight_total / server.effective_weight for server in candidates]
        return Choice(least_cost(candidates, costs, self._rng))
