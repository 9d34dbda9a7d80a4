"""Local decisions in the simulator: routing tables pushed to simulated clients, outcomes sent back.

What ``WatchRoutes`` and the SDK's local mode do, in simulated time:

- ``TableFeed.build`` is the service's feed (``server/rpc/_routes.py``): each push
  interval it takes the pool's servers as the service sees them (eligible,
  draining, reported load, the service's in-flight count, latency EWMA, error
  rate), the strategy's name and parameters, its outlier settings and what the
  strategy publishes (``Strategy.published``, through JSON as on the wire), and
  counts a new version when any of it changed.
- ``LocalClient`` is one client's ``RouteTables`` for that pool
  (``sdk/loadwarden/sdk/_local.py``): its own copy of every server, its own
  instance of the pool's strategy that adopts what the service published, its
  own in-flight counts, its own consecutive-failure ejections (with the panic
  rule), and outcomes back as ``OutcomeReport(local=LocalChoice(...))`` with the
  strategy's memo (``Strategy.memo_wire``), which the core learns from as the
  service does from a client's batch; and with each batch its in-flight counts
  of the servers whose count moved (``in_flight_report``), which the core adds
  into the table's ``in_flight``, less which the client reads the others' share.

Both mirror the service's and the SDK's code instead of calling it: the simulator
may import public names only, and neither ``RouteTables`` nor the feed's
``route_server``/``table_header`` is exported. Kept to what a decision reads; the
wire checks (malformed tables, versions across epochs, stream breaks) stay the
SDK's and its tests'.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from loadwarden.policy import Backend, Clock, LoadSample, LocalChoice, LocalInFlight, OutcomeReport, Pool
from loadwarden.policy.strategies import Feedback, Strategy, StrategyBase, StrategyContext, build_strategy
from loadwarden.policy.strategies.prequal import ProbeSource


@dataclass(frozen=True, slots=True)
class TableServer:
    """One server's entry of a routing table (a ``RouteServer``)."""

    id: str
    address: str
    weight: int
    effective_weight: float
    eligible: bool
    draining: bool
    routable: bool  # not drained, not stale (a RouteServer's state)
    load: LoadSample | None
    in_flight: int
    ewma_latency_ms: float
    error_rate: float
    outcomes_total: int


@dataclass(frozen=True, slots=True)
class RouteTable:
    """A whole routing table of one pool, as the service pushes it (a ``RouteTable``).

    Attributes:
        pool: Pool name.
        version: Counts the builds that changed something, from 1.
        strategy: The pool's strategy name.
        params_json: Its parameters, JSON.
        learned_json: What it published for clients, JSON ("" when nothing).
        consecutive_failures: Failures in a row that make a client eject a server (0: never).
        base_ejection_ms: How long a client's ejection lasts, ms.
        panic_threshold_percent: Below this share of un-ejected servers, ejections are ignored.
        servers: Every server of the pool.
    """

    pool: str
    version: int
    strategy: str
    params_json: str
    learned_json: str
    consecutive_failures: int
    base_ejection_ms: int
    panic_threshold_percent: int
    servers: tuple[TableServer, ...]


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


class TableFeed:
    """One pool's table, built from the core's pool every push; a new version when it changed."""

    def __init__(self) -> None:
        self.version = 0
        self._last: tuple[Any, ...] | None = None
        self.builds = 0

    def build(self, pool: Pool[Any], now: float) -> RouteTable | None:
        """The pool's table at monotonic ``now``; None when nothing changed since the last one."""
        self.builds += 1
        eligible = {server.id for server in pool.eligible(now)}
        settings = pool.settings
        outlier = settings.outlier
        header = (
            settings.strategy,
            _json(dict(settings.strategy_params)),
            _json(pool.strategy.published()),
            0 if outlier.disabled else outlier.consecutive_failures,
            outlier.base_ejection_time_ms,
            outlier.panic_threshold_percent,
        )
        servers = tuple(
            TableServer(
                id=s.id,
                address=s.address,
                weight=s.weight,
                effective_weight=s.effective_weight,
                eligible=s.id in eligible,
                draining=s.draining,
                routable=s.routable,
                load=s.load,
                in_flight=s.in_flight_total,
                ewma_latency_ms=s.ewma_latency_ms,
                error_rate=s.error_rate,
                outcomes_total=s.outcomes_total,
            )
            for s in pool.servers.values()
        )
        key = (header, servers)
        if key == self._last:
            return None
        self._last = key
        self.version += 1
        return RouteTable(pool.name, self.version, *header, servers)


@dataclass(frozen=True, slots=True)
class LocalDecision:
    """A local choice, kept with its request until the outcome."""

    server: Backend
    memo: Any
    explored: bool


class LocalClient:
    """One simulated client's view of one pool and the decisions it makes from it.

    Args:
        clock: The simulation's clock (what the client's strategy reads).
        rng: This client's randomness (its strategy's sampling and exploration).
        probes: Where a strategy that probes (``use_probes``) sends its probes; None
            leaves it reading its own view, as in the SDK.
    """

    def __init__(self, clock: Clock, rng: random.Random, probes: ProbeSource | None = None) -> None:
        self._clock = clock
        self._rng = rng
        self._probes = probes
        self.pool = ""
        self.version = 0
        self.strategy: Strategy | None = None
        self._strategy_key: tuple[str, str] = ("", "")
        self._learned_json = ""
        self._finishes = False
        self.servers: dict[str, Backend] = {}
        self._eligible: set[str] = set()
        self._consecutive_failures = 0
        self._ejection_s = 0.0
        self._panic_threshold_percent = 50
        self._ejected: dict[str, float] = {}  # server id -> end of this client's ejection
        self._next_return = math.inf
        self.candidates: list[Backend] = []
        self.decisions = 0
        self.ejections = 0
        self.reported: dict[str, int] = {}  # server id -> in-flight count as last reported (not 0)
        self._dirty: set[str] = set()  # servers whose in-flight count moved since the last report

    def apply(self, table: RouteTable) -> None:
        """Takes a pushed table: servers, strategy (rebuilt only when it changed), learned values."""
        now = self._clock.monotonic()
        self.pool = table.pool
        ids = {entry.id for entry in table.servers}
        for sid in [sid for sid in self.servers if sid not in ids]:
            del self.servers[sid]
            self._eligible.discard(sid)
            self._ejected.pop(sid, None)
            if self.strategy is not None:
                self.strategy.forget(sid)
        for entry in table.servers:
            server = self.servers.get(entry.id)
            if server is None:
                server = self.servers[entry.id] = Backend(entry.id, entry.address, entry.weight)
            server.address, server.weight = entry.address, entry.weight
            server.effective_weight = entry.effective_weight
            server.draining = entry.draining
            server.routable = entry.routable
            server.load = entry.load
            server.load_at = now if entry.load is not None else None
            # Every client's reported count, this one's too: the others' share is the rest. Reports
            # and tables arrive at once here, so the last report sent is the one the table holds
            # (a real client reads which one from RouteTable.in_flight_seq).
            server.peer_in_flight = max(0, entry.in_flight - self.reported.get(entry.id, 0))
            server.ewma_latency_ms, server.error_rate = entry.ewma_latency_ms, entry.error_rate
            server.outcomes_total = entry.outcomes_total
            if entry.eligible:
                self._eligible.add(entry.id)
            else:
                self._eligible.discard(entry.id)
        key = (table.strategy, table.params_json)
        if self.strategy is None or key != self._strategy_key:
            context = StrategyContext(clock=self._clock, rng=self._rng, servers=self.servers, local=True)
            self.strategy = build_strategy(table.strategy, json.loads(table.params_json or "{}"), context, "table")
            use_probes = getattr(self.strategy, "use_probes", None)
            if use_probes is not None and self._probes is not None:
                use_probes(self._probes)
            self._strategy_key = key
            self._finishes = getattr(type(self.strategy), "finished", None) is not StrategyBase.finished
            self._learned_json = ""
        if table.learned_json != self._learned_json:
            if table.learned_json:
                self.strategy.adopt(json.loads(table.learned_json))
            self._learned_json = table.learned_json
        self._consecutive_failures = table.consecutive_failures
        self._ejection_s = table.base_ejection_ms / 1000.0
        self._panic_threshold_percent = table.panic_threshold_percent
        self.version = table.version
        self._rebuild(now)

    def _rebuild(self, now: float) -> None:
        """Candidates: eligible servers less this client's ejections, unless too few would remain."""
        for sid in [sid for sid, until in self._ejected.items() if until <= now]:
            del self._ejected[sid]
        self._next_return = min(self._ejected.values(), default=math.inf)
        eligible = [s for s in self.servers.values() if s.id in self._eligible]
        healthy = [s for s in eligible if s.id not in self._ejected]
        enough = len(healthy) * 100 >= self._panic_threshold_percent * len(eligible)
        self.candidates = healthy if enough and healthy else eligible

    def decide(self, exclude: Collection[str] = ()) -> LocalDecision | None:
        """A local decision; None before the first table or without a candidate."""
        now = self._clock.monotonic()
        if now >= self._next_return:
            self._rebuild(now)
        candidates = self.candidates
        if exclude:
            candidates = [s for s in candidates if s.id not in exclude]
        if not candidates or self.strategy is None:
            return None
        server, explored, memo = self.strategy.choose(candidates)
        server.started(now)
        self._dirty.add(server.id)
        self.decisions += 1
        return LocalDecision(server, memo, explored)

    def finish(self, decision: LocalDecision, success: bool, latency_ms: float) -> OutcomeReport:
        """Settles a local decision; returns the outcome to send to the service."""
        server = decision.server
        server.ended(self._clock.monotonic(), success)
        self._dirty.add(server.id)
        server.consecutive_failures = 0 if success else server.consecutive_failures + 1
        strategy = self.strategy
        assert strategy is not None
        if self._finishes:
            strategy.finished(Feedback(server, success, latency_ms, decision.memo))
        if (
            not success
            and self._consecutive_failures
            and server.consecutive_failures >= self._consecutive_failures
            and server.id in self.servers
        ):
            server.consecutive_failures = 0
            now = self._clock.monotonic()
            self._ejected[server.id] = now + self._ejection_s
            self.ejections += 1
            self._rebuild(now)
        features, state = strategy.memo_wire(decision.memo)
        return OutcomeReport("", success, latency_ms, local=LocalChoice(self.pool, server.id, features, state))

    def in_flight_report(self) -> LocalInFlight | None:
        """The in-flight counts that moved since the last report; None when none did."""
        counts: dict[str, int] = {}
        for sid in self._dirty:
            server = self.servers.get(sid)
            count = server.in_flight if server is not None else 0
            if count != self.reported.get(sid, 0):
                counts[sid] = count
                if count:
                    self.reported[sid] = count
                else:
                    del self.reported[sid]
        self._dirty.clear()
        return LocalInFlight(self.pool, counts) if counts else None
