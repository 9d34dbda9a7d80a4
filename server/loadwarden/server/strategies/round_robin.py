"""Smooth weighted round robin (the nginx algorithm).

Each pick adds every candidate's weight to its running score, takes the highest
score and subtracts the candidates' total weight from the winner. With equal
weights this is plain rotation; with weights 5,1,1 the picks interleave
(a a b a c a a) instead of bunching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext


@dataclass(frozen=True, slots=True)
class RoundRobinParams:
    """Round robin takes no parameters."""


class RoundRobin(StrategyBase):
    """Weighted rotation over the eligible servers."""

    name = "round_robin"
    Params = RoundRobinParams

    def __init__(self, params: RoundRobinParams, context: StrategyContext) -> None:
        self._score: dict[str, float] = {}  # one entry per server of the pool at most

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        score = self._score
        total = 0.0
        best = candidates[0]
        best_score = None
        for server in candidates:
            s = score.get(server.id, 0) + server.effective_weight
            score[server.id] = s
            total += server.effective_weight
            if best_score is None or s > best_score:
                best, best_score = server, s
        score[best.id] -= total
        return Choice(best)

    def forget(self, server_id: str) -> None:
        self._score.pop(server_id, None)
