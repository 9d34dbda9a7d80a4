"""Weighted round robin: rotation when weights are equal, earliest deadline first otherwise.

When every candidate weighs the same, the picks are a rotation over the list in
order: O(1) per pick while the pool hands over the same candidate list (it keeps
one until the servers change).

With unequal weights the picks come from an earliest-deadline-first schedule
(Envoy's ``EdfScheduler``, source/common/upstream/edf_scheduler.h): each server
has a deadline on a virtual clock; a pick takes the earliest from a min-heap,
moves the clock to it and sets that server's next deadline ``1 / weight`` later.
Each server's picks are thus exactly ``1 / weight`` apart: shares follow the
weights, and a server's picks are spread among the others' rather than bunched
(at most ``weight / largest other weight + 1`` in a row: 6 for weights 5, 1, 1).
Equal deadlines go to the entry scheduled first. A pick costs O(log N).

A new candidate list (a server joins, leaves, is re-weighted, drained, ejected or
ramping up, or a request excludes some) rebuilds the heap, O(N). Envoy rebuilds
its schedule from scratch and skips a seeded number of picks; here the schedule
carries over instead, so a change neither restarts every server at once (which
bunches picks) nor favours those first in the list:

- a server that stays keeps its deadline; if its weight changed, the time it
  still has to wait is scaled by old / new weight, keeping the fraction of its
  period it has waited;
- a server new to the schedule, or one whose deadline passed while it was out of
  it, starts at ``now + u / weight`` with ``u`` uniform in (0, 1] (seeded): where
  a server of that weight would be had it always been there, at a random phase;
- a server left out of a list (a request's excludes) keeps its deadline for when
  it comes back, until that deadline passes.

A new list of the same servers and weights therefore changes nothing: the picks
are those the old list would have given. Every deadline lies at most one period
after the clock, and the clock is moved back to 0 after ``REBASE_AFTER``, so its
precision never decays in a pool that runs for long.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, StrategyBase, StrategyContext

# Virtual time after which the clock and every deadline are moved back by it (float
# spacing there is ~2e-10, far below the smallest period, 1/1000).
REBASE_AFTER = 2.0**20

# A heap entry: deadline, scheduling order (breaks equal deadlines), weight, server.
Entry = tuple[float, int, float, Backend]


@dataclass(frozen=True, slots=True)
class RoundRobinParams:
    """Round robin takes no parameters."""


class RoundRobin(StrategyBase):
    """Weighted rotation over the eligible servers."""

    name = "round_robin"
    Params = RoundRobinParams

    def __init__(self, params: RoundRobinParams, context: StrategyContext) -> None:
        self._rng: random.Random = context.rng
        # The last candidate list seen and whether its weights are all equal; the
        # reference keeps the list alive, so ``is`` never matches a new list.
        self._last: Sequence[Backend] | None = None
        self._uniform = False
        self._next = 0  # rotation index into ``_last`` while it is uniform
        self._last_id = ""  # the server the rotation picked last
        self._heap: list[Entry] = []  # the schedule of ``_last`` while it is not uniform
        self._now = 0.0  # virtual time: the deadline of the last pick
        self._order = 0  # entries scheduled so far; the tiebreak of equal deadlines
        # Servers out of the schedule, by id: (deadline, order, weight) as they left it.
        self._away: dict[str, tuple[float, int, float]] = {}
        self._gone: set[str] = set()  # ids forgotten since the heap was last emptied

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        if candidates is not self._last:
            self._take(candidates)
        if self._uniform:
            i = self._next % len(candidates)
            self._next = i + 1
            server = candidates[i]
            self._last_id = server.id
            return Choice(server)
        if self._now > REBASE_AFTER:
            self._rebase()
        heap = self._heap
        deadline, _, weight, server = heap[0]
        self._now = deadline
        self._order += 1
        heapq.heapreplace(heap, (deadline + 1.0 / weight, self._order, weight, server))
        return Choice(server)

    def forget(self, server_id: str) -> None:
        self._away.pop(server_id, None)
        self._gone.add(server_id)
        self._last = None

    def _take(self, candidates: Sequence[Backend]) -> None:
        self._last = candidates
        first = candidates[0].effective_weight
        self._uniform = all(server.effective_weight == first for server in candidates)
        self._unschedule()
        if not self._uniform:
            self._schedule(candidates)
            return
        # Go on after the last pick when it is still a candidate (lists keep registration order).
        for i, server in enumerate(candidates):
            if server.id == self._last_id:
                self._next = i + 1
                break

    def _unschedule(self) -> None:
        """Moves every scheduled server to ``_away``, keeping its deadline."""
        away, gone = self._away, self._gone
        for deadline, order, weight, server in self._heap:
            if server.id not in gone:
                away[server.id] = (deadline, order, weight)
        self._heap = []
        gone.clear()

    def _schedule(self, candidates: Sequence[Backend]) -> None:
        """Builds the heap of ``candidates`` from ``_away`` (see the module docstring)."""
        away, now, rng = self._away, self._now, self._rng
        heap: list[Entry] = []
        for server in candidates:
            weight = server.effective_weight
            kept = away.pop(server.id, None)
            if kept is None or kept[0] < now:  # new, or its deadline passed while away
                self._order += 1
                heap.append((now + (1.0 - rng.random()) / weight, self._order, weight, server))
                continue
            deadline, order, old_weight = kept
            if old_weight != weight:
                deadline = now + (deadline - now) * old_weight / weight
            heap.append((deadline, order, weight, server))
        heapq.heapify(heap)
        self._heap = heap
        # Those still away keep their deadline only while it has not passed.
        self._away = {sid: kept for sid, kept in away.items() if kept[0] >= now}

    def _rebase(self) -> None:
        """Moves the virtual clock and every deadline back by ``_now``."""
        now = self._now
        self._heap = [(deadline - now, order, weight, server) for deadline, order, weight, server in self._heap]
        heapq.heapify(self._heap)  # rounding may have made deadlines equal, so order decides anew
        self._away = {sid: (deadline - now, order, weight) for sid, (deadline, order, weight) in self._away.items()}
        self._now = 0.0
