"""Requests in flight that clients deciding locally report, added to the servers' counts.

A client deciding from a WatchRoutes table counts its own requests in flight; the
service counts only its own selections. Without the other clients' counts every
local client sees a third of the load when three share a pool, and they pile onto
the same servers between two load reports (docs/local-decisions-quality.md). So
each client reports its counts with its outcome batches (``ReportOutcomeRequest.
in_flight``: the servers whose count changed, and now and then all of them), the
service keeps one set of counts per client (caller identity and client instance)
and sums them into ``Backend.client_in_flight``, which the table's ``in_flight``
and every strategy's ``in_flight_total`` include. It keeps the number of each
client's latest report too (``seq``): a table says which report of its receiver it
holds, so the receiver takes out exactly its own share.

Bounded: at most ``max_clients`` clients (the least recently heard one is forgotten
first, its counts taken back), and a client not heard from for ``ttl_s`` is
forgotten the same way, so a dead client's requests do not weigh on its servers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from loadwarden.policy import LocalInFlight, Pool


class _Client:
    __slots__ = ("counts", "seen", "seq")

    def __init__(self, seen: float) -> None:
        self.seen = seen
        self.seq = 0  # ReportOutcomeRequest.in_flight_seq of the report taken last (0: not numbered)
        self.counts: dict[str, dict[str, int]] = {}  # pool -> server id -> requests in flight


class LocalInFlightBook:
    """Every local client's requests in flight, summed per pool and server.

    Args:
        find_pool: The core's pool of a name (None when it does not exist).
        max_clients: Clients remembered at once; a new one past it forgets the least
            recently heard.
        ttl_s: A client not heard from for this long is forgotten, seconds.
    """

    def __init__(self, find_pool: Callable[[str], Pool | None], max_clients: int, ttl_s: float) -> None:
        self._find_pool = find_pool
        self._max_clients = max_clients
        self._ttl_s = ttl_s
        self._clients: OrderedDict[tuple[str, str], _Client] = OrderedDict()  # least recently heard first
        self._totals: dict[str, dict[str, int]] = {}  # pool -> server id -> sum over clients
        self.forgotten = 0  # clients forgotten at the cap or their TTL

    def __len__(self) -> int:
        return len(self._clients)

    def seq(self, client: tuple[str, str]) -> int:
        """The number of the client's report taken last; 0 when it sent none numbered, or was forgotten."""
        entry = self._clients.get(client)
        return 0 if entry is None else entry.seq

    def report(self, client: tuple[str, str], reports: Sequence[LocalInFlight], now: float, seq: int = 0) -> None:
        """Takes one client's counts (already checked) from its report numbered ``seq``; pools
        or servers that do not exist are skipped."""
        entry = self._clients.get(client)
        if entry is None:
            while len(self._clients) >= self._max_clients:
                self._forget_oldest()
            entry = self._clients[client] = _Client(now)
        else:
            entry.seen = now
            self._clients.move_to_end(client)
        entry.seq = seq
        for report in reports:
            pool = self._find_pool(report.pool)
            if pool is None:
                entry.counts.pop(report.pool, None)  # its servers went with it
                continue
            counts = entry.counts.setdefault(report.pool, {})
            if report.complete:
                updates = {sid: 0 for sid in counts if sid not in report.counts}
                updates.update(report.counts)
            else:
                updates = dict(report.counts)
            moved = False
            for sid, count in updates.items():
                if sid not in pool.servers:
                    counts.pop(sid, None)
                    continue
                moved |= self._move(pool, counts, sid, count)
            if not counts:
                del entry.counts[report.pool]
            if moved:  # strategies that index costs (least_connections) rebuild on a new list
                pool.invalidate()

    def expire(self, now: float) -> None:
        """Forgets the clients not heard from for ``ttl_s``."""
        clients = self._clients
        while clients and next(iter(clients.values())).seen + self._ttl_s <= now:
            self._forget_oldest()

    def forget_pool(self, name: str) -> None:
        """Drops a deleted pool's counts (its servers are gone)."""
        self._totals.pop(name, None)
        for entry in self._clients.values():
            entry.counts.pop(name, None)

    def forget_server(self, pool_name: str, server_id: str) -> None:
        """Drops a removed server's counts, so that one registered again under its id
        starts from 0 as its ``client_in_flight`` does."""
        totals = self._totals.get(pool_name)
        if totals is not None:
            totals.pop(server_id, None)
            if not totals:
                del self._totals[pool_name]
        for entry in self._clients.values():
            counts = entry.counts.get(pool_name)
            if counts is not None:
                counts.pop(server_id, None)

    def _forget_oldest(self) -> None:
        _, entry = self._clients.popitem(last=False)
        self.forgotten += 1
        for name, counts in entry.counts.items():
            pool = self._find_pool(name)
            moved = False
            for sid in list(counts):
                if pool is not None and sid in pool.servers:
                    moved |= self._move(pool, counts, sid, 0)
                else:
                    self._subtract(name, sid, counts.pop(sid))
            if moved and pool is not None:
                pool.invalidate()

    def _move(self, pool: Pool, counts: dict[str, int], sid: str, count: int) -> bool:
        """Sets one client's count of one server; True when the server's sum moved."""
        old = counts.get(sid, 0)
        if count == old:
            return False
        if count:
            counts[sid] = count
        else:
            counts.pop(sid, None)
        totals = self._totals.setdefault(pool.name, {})
        total = totals.get(sid, 0) + count - old
        if total > 0:
            totals[sid] = total
        else:
            totals.pop(sid, None)
            if not totals:
                del self._totals[pool.name]
        pool.servers[sid].client_in_flight = max(0, total)
        return True

    def _subtract(self, pool_name: str, sid: str, count: int) -> None:
        totals = self._totals.get(pool_name)
        if totals is None or sid not in totals:
            return
        total = totals[sid] - count
        if total > 0:
            totals[sid] = total
        else:
            del totals[sid]
            if not totals:
                del self._totals[pool_name]
