"""Least connections: the server with the fewest in-flight requests per unit of weight.

A server's cost is ``in_flight_total / effective_weight``. Ties are broken
uniformly at random (seeded), so equal servers share the load instead of the
first one in the list taking every tie. Requests long overdue count as more
(``overdue_load``: a server whose requests in flight have gone several times
its usual latency without an answer weighs that many more), so a server that
turned very slow stops taking traffic before its first request times out.

Scanning every candidate costs O(N) a decision (about 1 ms at 10,000 servers),
so the candidates are kept ordered by cost instead, as HAProxy's leastconn does
(src/lb_fwlc.c: a tree keyed by connections per weight, a server moved each time
it takes or ends one). Here servers of equal cost share a bucket (a list, plus
each server's position in it for O(1) removal) and a min-heap holds the distinct
costs. A decision reads the lowest cost off the heap and draws one server of its
bucket uniformly, which is exactly the scan's rule (every server of minimal cost
equally likely, each decision afresh); only which server a given seed picks
differs, as a bucket's order is not the list's. Moving a server to another cost
is O(1), plus O(log B) for B <= N distinct costs when its new cost has no bucket
yet; emptied costs leave the heap lazily, and the heap is rebuilt from the live
costs once it holds more than twice as many entries (plus ``HEAP_SLACK``).

The index stays true because a cost changes only in ways the strategy sees:

- ``in_flight`` + 1 on the server just chosen (the core, right after
  ``choose``): that server is re-keyed at the strategy's next call;
- ``in_flight`` - 1 right before ``observe`` (``finished`` in a client) for
  that server: re-keyed there (a server not indexed, e.g. one removed from the
  pool, is skipped);
- peer counts, weights, membership, drain, ejection: ``Pool.eligible`` hands
  over a new candidate list (it returns the same list object until then, and
  ``exchange_in_flight`` invalidates pools whose peer counts moved).

Overdue time grows with the clock, not with events, so it is filed lazily: the
server a decision draws is checked, and when it is overdue it is re-filed under
its cost with the penalty and the draw is made again, until the server drawn is
not overdue or is filed under its penalty already: a true minimum, each
overdue server moved at most once a decision. Its next re-key files it back
under its plain cost, to be checked again when it is drawn.

A list seen for the first time is scanned, O(N) as before; the index is built
when the same list object comes back, so a one-off list (a request's excludes)
never replaces the index of the pool's standing list. Every re-key reads the
server's cost afresh, so an increment that never came (a caller that only calls
``choose``) leaves the index as it was.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from .._model import Backend
from ._base import Choice, Feedback, StrategyBase, StrategyContext
from ._sampling import least_cost, overdue_load

# Stale heap entries tolerated beyond twice the live costs before the heap is rebuilt.
HEAP_SLACK = 64


@dataclass(frozen=True, slots=True)
class LeastConnectionsParams:
    """Least connections takes no parameters."""


class LeastConnections(StrategyBase):
    """Picks the minimum of ``in_flight_total / effective_weight``."""

    name = "least_connections"
    Params = LeastConnectionsParams

    def __init__(self, params: LeastConnectionsParams, context: StrategyContext) -> None:
        self._rng = context.rng
        self._clock = context.clock
        # The indexed list and the last list seen once; the references keep them alive,
        # so ``is`` never matches a new list that reuses an old one's address.
        self._indexed: Sequence[Backend] | None = None
        self._seen: Sequence[Backend] | None = None
        self._cost: dict[Backend, float] = {}  # indexed server -> the cost it is filed under
        self._pos: dict[Backend, int] = {}  # indexed server -> its position in its bucket
        self._buckets: dict[float, list[Backend]] = {}  # cost -> servers of that cost; never empty
        self._heap: list[float] = []  # every cost with a bucket, and costs whose bucket has gone
        self._chosen: Backend | None = None  # last pick, whose in_flight may have grown since

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        self._settle_chosen()
        now = self._clock.monotonic()
        if candidates is not self._indexed:
            if candidates is not self._seen:
                self._seen = candidates
                costs = [(s.in_flight_total + overdue_load(s, now)) / s.effective_weight for s in candidates]
                self._chosen = least_cost(candidates, costs, self._rng)
                return Choice(self._chosen)
            self._index(candidates)
        heap, buckets = self._heap, self._buckets
        while True:
            while heap[0] not in buckets:
                heapq.heappop(heap)
            bucket = buckets[heap[0]]
            server = bucket[0] if len(bucket) == 1 else bucket[self._rng.randrange(len(bucket))]
            overdue = overdue_load(server, now)
            if not overdue:
                break
            cost = (server.in_flight_total + overdue) / server.effective_weight
            if cost <= self._cost[server]:
                break  # filed under its penalty already: still the cheapest
            self._move(server, cost)
        self._chosen = server
        return Choice(server)

    def observe(self, feedback: Feedback) -> None:
        self._settle_chosen()
        self._rekey(feedback.server)

    def finished(self, feedback: Feedback) -> None:
        """A client instance's decision ended, settling its count: re-keyed as in ``observe``."""
        self.observe(feedback)

    def forget(self, server_id: str) -> None:
        self._indexed = self._seen = self._chosen = None
        self._cost, self._pos, self._buckets, self._heap = {}, {}, {}, []

    def _settle_chosen(self) -> None:
        if self._chosen is not None:
            self._rekey(self._chosen)
            self._chosen = None

    def _index(self, candidates: Sequence[Backend]) -> None:
        self._indexed, self._seen = candidates, None
        self._cost, self._pos, self._buckets = {}, {}, {}
        for server in candidates:
            self._file(server, server.in_flight_total / server.effective_weight)
        self._heap = list(self._buckets)
        heapq.heapify(self._heap)

    def _rekey(self, server: Backend) -> None:
        if server in self._cost:
            self._move(server, server.in_flight_total / server.effective_weight)

    def _move(self, server: Backend, cost: float) -> None:
        """Files indexed ``server`` under ``cost``."""
        old = self._cost[server]
        if cost == old:
            return
        bucket = self._buckets[old]
        i = self._pos[server]
        last = bucket.pop()
        if last is not server:
            bucket[i] = last
            self._pos[last] = i
        elif not bucket:
            del self._buckets[old]
        if self._file(server, cost):
            if len(self._heap) > 2 * len(self._buckets) + HEAP_SLACK:
                self._heap = list(self._buckets)
                heapq.heapify(self._heap)
            else:
                heapq.heappush(self._heap, cost)

    def _file(self, server: Backend, cost: float) -> bool:
        """Files ``server`` under ``cost``; True when that cost had no bucket yet."""
        bucket = self._buckets.get(cost)
        created = bucket is None
        if bucket is None:
            bucket = self._buckets[cost] = []
        self._cost[server] = cost
        self._pos[server] = len(bucket)
        bucket.append(server)
        return created
