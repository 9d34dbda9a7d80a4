"""Smooth weighted round robin (the nginx algorithm).

Each pick adds every candidate's weight to its running score, takes the highest
score and subtracts the candidates' total weight from the winner. With equal
weights this is plain rotation; with weights 5,1,1 the picks interleave
(a a b a c a a) instead of bunching.

Each pick costs O(candidates). When every candidate weighs the same, the picks
are exactly a rotation, so that case rotates an index instead: O(1) per pick
while the pool hands over the same candidate list (it keeps one until the
servers change), which keeps a 10,000-server pool cheap.
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
        # The last candidate list seen and whether its weights are all equal; the
        # reference keeps the list alive, so ``is`` never matches a new list.
        self._last: Sequence[Backend] | None = None
        self._uniform = False
        self._next = 0  # rotation index into ``_last`` while it is uniform
        self._last_id = ""  # the server the rotation picked last

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        if candidates is not self._last:
            self._last = candidates
            first = candidates[0].effective_weight
            self._uniform = all(server.effective_weight == first for server in candidates)
            if self._uniform:
                self._score.clear()  # rotation state replaces the scores
                # Go on after the last pick when it is still a candidate (lists keep registration order).
                for i, server in enumerate(candidates):
                    if server.id == self._last_id:
                        self._next = i + 1
                        break
        if self._uniform:
            i = self._next % len(candidates)
            self._next = i + 1
            server = candidates[i]
            self._last_id = server.id
            return Choice(server)
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
        self._last = None
