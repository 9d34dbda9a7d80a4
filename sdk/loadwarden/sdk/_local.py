"""Local decisions: routing tables pushed by WatchRoutes, and the choices made from them.

`RouteTables` keeps the last good table of each watched pool and decides with the
kernel's own strategies (`loadwarden.policy.strategies`): the service's instance
learns and publishes (`Strategy.published`), this client's instance of the same
class adopts that (`Strategy.adopt`) and chooses. Learning stays central: every
local decision's outcome goes back to the service as an `Outcome` with `local` set,
carrying the strategy's memo (`Strategy.memo_wire`), and only what the client
measures itself (peak-EWMA latencies, its own in-flight count) is kept here.

Clients deciding locally see each other's load through the service: each reports
its requests in flight per server with its outcome batches (`in_flight_report`:
the servers whose count changed, and all of them every `IN_FLIGHT_REFRESH_S`), the
service adds every client's counts into the table's `in_flight`, and a client
takes the others' share as that count less its own share in it (`peer_in_flight`).
Its own share is the report the table says it holds (`RouteTable.in_flight_seq`:
reports are numbered, and the client keeps those the service has not yet shown
it holds), not the last one sent: a table built before the latest report arrived,
or on its way while the client sent another, holds an older count. Without any of
it each of three clients sees a third of the load and they pile onto the same
servers (docs/local-decisions-quality.md).

A table is checked whole before any of it is taken: a malformed one (bad ids,
weights, numbers, strategy, parameters or learned values; too many servers) is
rejected and the last good table stays. A change applies only to the version it
names as its base. Tables go stale `stale_after_s` after the stream that brought
them broke; decisions go on from them and say so.

All of it is plain data under one lock: the sync client calls it from many
threads, the async one from its loop. No I/O here; `_async/routes.py` streams.
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from loadwarden.policy import Backend, InvalidArgument, LoadSample
from loadwarden.policy.strategies import Feedback, Strategy, StrategyBase, StrategyContext, build_strategy
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

_log = logging.getLogger("loadwarden.sdk")

# Local decision ids start with "~", which no service id can (names never hold it).
LOCAL_ID_PREFIX = "~"
DEFAULT_MAX_TABLE_SERVERS = 10_000
MAX_LOCAL_PENDING = 100_000  # local decisions awaiting their outcome, at most (oldest settled first)
LOCAL_DECISION_TTL_S = 30.0  # a local decision with no outcome this long is settled without one
_EXPIRY_EVERY = 1_024  # decisions between two looks for expired ones
DEFAULT_OUTCOME_RATE = 2_000.0  # outcomes of local decisions sent per second, about, before sampling
IN_FLIGHT_INTERVAL_S = 0.005  # a changed in-flight count is reported this soon, at most (with outcomes: at once)
MAX_UNHELD_REPORTS = 256  # reports a pool keeps until a table holds them; older ones count as held
IN_FLIGHT_REFRESH_S = 1.0  # every count is reported again this often while any is not 0 (the service forgets at 3 s)
MAX_IN_FLIGHT_POOLS = 100  # pools in one report (the contract's bound)
MAX_IN_FLIGHT_SERVERS = 10_000  # servers in one report, all pools together (the contract's bound)
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/-")
_MAX_ADDRESS_LEN = 256
_STATES = {
    _common.SERVER_STATE_SERVING,
    _common.SERVER_STATE_STALE,
    _common.SERVER_STATE_DRAINING,
    _common.SERVER_STATE_EJECTED,
    _common.SERVER_STATE_UNHEALTHY,
    _common.SERVER_STATE_DEGRADED,
}


class TableRejected(ValueError):
    """A routing table (or change) that does not fit; the last good table stays."""


class _Clock:
    """The kernel's Clock protocol over the client's monotonic clock."""

    __slots__ = ("monotonic",)

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic

    def wall(self) -> float:
        return time.time()


class LocalDecision(NamedTuple):
    """What a local decision chose, kept until its outcome (or its TTL)."""

    pool: str
    server: Backend
    memo: Any
    version: int
    explored: bool
    at: float


def _name(value: str, what: str) -> str:
    if not (1 <= len(value) <= 128 and all(ch in _NAME_CHARS for ch in value)):
        raise TableRejected(f"{what}: {value[:80]!r} is not a valid name")
    return value


def _number(value: float, what: str, low: float, high: float) -> float:
    if not (math.isfinite(value) and low <= value <= high):
        raise TableRejected(f"{what}: {value!r} is not a number in [{low:g}, {high:g}]")
    return value


@dataclass(frozen=True, slots=True)
class _Entry:
    """One checked RouteServer."""

    id: str
    address: str
    weight: int
    effective_weight: float
    eligible: bool
    draining: bool
    stale: bool
    load: LoadSample | None
    in_flight: int
    ewma_latency_ms: float
    error_rate: float
    outcomes_total: int


def _entry(message: _pb.RouteServer, where: str) -> _Entry:
    _name(message.id, f"{where}.id")
    if not message.address or len(message.address) > _MAX_ADDRESS_LEN or not message.address.isprintable():
        raise TableRejected(f"{where}.address: must be 1-{_MAX_ADDRESS_LEN} printable characters")
    if not 1 <= message.weight <= 1000:
        raise TableRejected(f"{where}.weight: {message.weight} is not in 1-1000")
    _number(message.effective_weight, f"{where}.effective_weight", 1e-9, float(message.weight))
    if message.state not in _STATES:
        raise TableRejected(f"{where}.state: unknown state {message.state}")
    load = None
    if message.HasField("load"):
        r = message.load
        load = LoadSample(
            cpu_percent=_number(r.cpu_percent, f"{where}.load.cpu_percent", 0.0, 100.0),
            memory_percent=_number(r.memory_percent, f"{where}.load.memory_percent", 0.0, 100.0),
            active_requests=int(_number(r.active_requests, f"{where}.load.active_requests", 0, 1_000_000)),
            mean_latency_ms=_number(r.mean_latency_ms, f"{where}.load.mean_latency_ms", 0.0, 86_400_000.0),
            error_rate=_number(r.error_rate, f"{where}.load.error_rate", 0.0, 1.0),
        )
    return _Entry(
        id=message.id,
        address=message.address,
        weight=message.weight,
        effective_weight=message.effective_weight,
        eligible=message.eligible,
        draining=message.state == _common.SERVER_STATE_DRAINING,
        stale=message.state == _common.SERVER_STATE_STALE,
        load=load,
        in_flight=message.in_flight,
        ewma_latency_ms=_number(message.ewma_latency_ms, f"{where}.ewma_latency_ms", 0.0, 86_400_000.0),
        error_rate=_number(message.error_rate, f"{where}.error_rate", 0.0, 1.0),
        outcomes_total=message.outcomes_total,
    )


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise TableRejected(f"{what}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise TableRejected(f"{what}: must be a JSON object")
    return value


class LocalPool:
    """One pool's last good table and this client's view of its servers.

    `servers` holds every server of the table (the strategy's context reads it, so
    q_learning's whole-pool state has the service's ids); `candidates` those the
    service says are eligible less the ones this client ejected, kept as one list
    while nothing changes (strategies detect a new list by identity).
    """

    def __init__(self, name: str, rng: random.Random, clock: Callable[[], float]) -> None:
        self.name = name
        self.version = 0
        self.epoch = ""
        self.strategy_name = ""
        self._params_json = ""
        self._learned_json = ""
        self.strategy: Strategy | None = None
        self._strategy_finishes = False
        self.servers: dict[str, Backend] = {}
        self._eligible: set[str] = set()
        self._clock = clock
        self._rng = rng
        self.consecutive_failures = 0
        self.ejection_s = 0.0
        self.panic_threshold_percent = 50
        self._ejected: dict[str, float] = {}  # server id -> monotonic end of this client's ejection
        self._next_return = math.inf
        self.candidates: list[Backend] = []
        self.deleted = False
        self.reported: dict[str, int] = {}  # server id -> this client's in-flight count as last reported (not 0)
        self.dirty: set[str] = set()  # servers whose in-flight count moved since the last report
        # This client's counts as the table it holds includes them (not 0), and the reports
        # sent since that a table has not yet said it holds: (seq, counts, complete).
        self.held: dict[str, int] = {}
        self._unheld: deque[tuple[int, dict[str, int], bool]] = deque()
        self._table_in_flight: dict[str, int] = {}  # server id -> the table's in_flight (every client's)

    def apply(self, table: _pb.RouteTable, max_servers: int) -> bool:
        """Takes a table or a change; False when it is a change to another version (ignored).

        Raises:
            TableRejected: the table does not fit; nothing of it was taken.
        """
        if table.pool != self.name:
            raise TableRejected(f"pool: table for {table.pool[:80]!r} on the stream of {self.name!r}")
        if table.deleted:
            self.deleted, self.version, self.epoch = True, table.version, table.epoch
            self.candidates = []
            return True
        same_epoch = table.epoch == self.epoch
        if not table.full and (not same_epoch or table.base_version != self.version):
            return False
        if same_epoch and (table.version < self.version or (not table.full and table.version == self.version)):
            raise TableRejected(f"version: {table.version} does not follow {self.version}")
        entries: dict[str, _Entry] = {}
        for i, message in enumerate(table.servers):
            entry = _entry(message, f"servers[{i}]")
            if entry.id in entries:
                raise TableRejected(f"servers[{i}].id: {entry.id!r} twice")
            entries[entry.id] = entry
        removed = set(table.removed_server_ids)
        if table.full:
            kept: Collection[str] = ()
        else:
            kept = [sid for sid in self.servers if sid not in removed and sid not in entries]
        if len(kept) + len(entries) > max_servers:
            raise TableRejected(f"servers: {len(kept) + len(entries)} servers, over this client's {max_servers}")
        strategy, new = self._strategy_for(table)
        learned = None
        if new or table.learned_json != self._learned_json:
            learned = _json_object(table.learned_json, "learned_json")
            if learned:
                self._check_learned(table, learned)
        # Checked: take it.
        if table.full:
            for sid in [sid for sid in self.servers if sid not in entries]:
                self._drop(sid)
        else:
            for sid in removed:
                self._drop(sid)
        if table.HasField("in_flight_seq"):
            own, moved = self.held, self._hold(table.in_flight_seq)
        else:  # a service that does not say: the last report sent is the best guess
            own, moved = self.reported, set()
        for entry in entries.values():
            self._take(entry, own)
        for sid in moved:
            server = self.servers.get(sid)
            if server is not None and sid not in entries:
                server.peer_in_flight = max(0, self._table_in_flight.get(sid, 0) - own.get(sid, 0))
        self.version, self.epoch = table.version, table.epoch
        self.consecutive_failures = table.consecutive_failures
        self.ejection_s = table.base_ejection_time_ms / 1000.0
        self.panic_threshold_percent = table.panic_threshold_percent
        if new:
            self.strategy = strategy
            # Most strategies keep nothing per decision: their (no-op) finished is not called.
            self._strategy_finishes = getattr(type(strategy), "finished", None) is not StrategyBase.finished
            self.strategy_name, self._params_json = table.strategy, table.strategy_params_json
        if learned is not None:
            if learned:
                strategy.adopt(learned)
            self._learned_json = table.learned_json
        self._rebuild(self._clock())
        return True

    def _strategy_for(self, table: _pb.RouteTable) -> tuple[Strategy, bool]:
        """The current strategy when the table keeps it, else a new instance (checked), and
        whether it is new."""
        key = (table.strategy, table.strategy_params_json)
        if self.strategy is not None and key == (self.strategy_name, self._params_json):
            return self.strategy, False
        context = StrategyContext(clock=_Clock(self._clock), rng=self._rng, servers=self.servers, local=True)
        return self._build(table, context), True

    def _build(self, table: _pb.RouteTable, context: StrategyContext) -> Strategy:
        params = _json_object(table.strategy_params_json, "strategy_params_json")
        try:
            return build_strategy(table.strategy, params, context, "table")
        except InvalidArgument as err:
            raise TableRejected(f"strategy: {err}") from None

    def _check_learned(self, table: _pb.RouteTable, learned: dict[str, Any]) -> None:
        """Raises TableRejected unless a fresh instance of the strategy adopts ``learned``."""
        trial = self._build(table, StrategyContext(clock=_Clock(self._clock), rng=random.Random(0)))
        try:
            trial.adopt(learned)
        except (ValueError, TypeError, KeyError) as err:
            raise TableRejected(f"learned_json: {err}") from None

    def _hold(self, seq: int) -> set[str]:
        """Moves `held` to the report numbered ``seq`` (0: none); returns the servers whose
        held count changed."""
        held = self.held
        if not seq:
            moved = set(held)
            held.clear()
            return moved
        moved = set()
        unheld = self._unheld
        while unheld and unheld[0][0] <= seq:
            _, counts, complete = unheld.popleft()
            if complete:
                moved.update(held)
                held.clear()
            for sid, count in counts.items():
                moved.add(sid)
                if count:
                    held[sid] = count
                else:
                    held.pop(sid, None)
        return moved

    def _sent(self, seq: int, counts: dict[str, int], complete: bool) -> None:
        """Keeps a report until a table holds it (at most `MAX_UNHELD_REPORTS`: the oldest
        beyond them count as held)."""
        if not seq:
            return
        self._unheld.append((seq, counts, complete))
        if len(self._unheld) > MAX_UNHELD_REPORTS:
            self._hold(self._unheld[0][0])

    def _take(self, entry: _Entry, own: Mapping[str, int]) -> None:
        server = self.servers.get(entry.id)
        if server is None:
            server = self.servers[entry.id] = Backend(entry.id, entry.address, entry.weight)
        server.address, server.weight = entry.address, entry.weight
        server.effective_weight = entry.effective_weight
        server.draining = entry.draining
        server.routable = not (entry.draining or entry.stale)  # as the service's pool marks it
        server.load = entry.load
        server.load_at = self._clock() if entry.load is not None else None
        # The service's count holds every client's report, this one's too: the others' share is the rest.
        self._table_in_flight[entry.id] = entry.in_flight
        server.peer_in_flight = max(0, entry.in_flight - own.get(entry.id, 0))
        server.ewma_latency_ms, server.error_rate = entry.ewma_latency_ms, entry.error_rate
        server.outcomes_total = entry.outcomes_total
        if entry.eligible:
            self._eligible.add(entry.id)
        else:
            self._eligible.discard(entry.id)

    def _drop(self, server_id: str) -> None:
        if self.servers.pop(server_id, None) is not None and self.strategy is not None:
            self.strategy.forget(server_id)
        self._eligible.discard(server_id)
        self._ejected.pop(server_id, None)
        self._table_in_flight.pop(server_id, None)

    def _rebuild(self, now: float) -> None:
        """Recomputes `candidates`: eligible servers less this client's ejections (unless too
        few would remain: then, as in the service's panic, the ejections are ignored)."""
        for sid in [sid for sid, until in self._ejected.items() if until <= now]:
            del self._ejected[sid]
        self._next_return = min(self._ejected.values(), default=math.inf)
        eligible = [s for s in self.servers.values() if s.id in self._eligible]
        healthy = [s for s in eligible if s.id not in self._ejected]
        enough = len(healthy) * 100 >= self.panic_threshold_percent * len(eligible)
        self.candidates = healthy if enough and healthy else eligible

    def choose(self, exclude: Collection[str], now: float) -> tuple[Backend, bool, Any] | None:
        if now >= self._next_return:
            self._rebuild(now)
        candidates = self.candidates
        if exclude:
            candidates = [s for s in candidates if s.id not in exclude]
        if not candidates or self.strategy is None:
            return None
        server, explored, memo = self.strategy.choose(candidates)
        server.started(now)
        self.dirty.add(server.id)
        return server, explored, memo

    def finish(self, decision: LocalDecision, success: bool, latency_ms: float, now: Callable[[], float]) -> None:
        server = decision.server
        server.ended(now(), success)
        self.dirty.add(server.id)
        server.consecutive_failures = 0 if success else server.consecutive_failures + 1
        if self._strategy_finishes and self.strategy is not None:
            self.strategy.finished(Feedback(server, success, latency_ms, decision.memo))
        if (
            not success
            and self.consecutive_failures
            and server.consecutive_failures >= self.consecutive_failures
            and server.id in self.servers
        ):
            server.consecutive_failures = 0
            at = now()
            self._ejected[server.id] = at + self.ejection_s
            _log.warning("server %s/%s ejected locally for %.1f s", self.name, server.id, self.ejection_s)
            self._rebuild(at)

    def settle(self, decision: LocalDecision, latency_ms: float) -> None:
        """Tells the strategy a decision ended without an outcome (what it counts in flight)."""
        if self._strategy_finishes and self.strategy is not None:
            feedback = Feedback(decision.server, False, latency_ms, decision.memo, expired=True)
            self.strategy.finished(feedback)

    def locally_ejected(self) -> list[str]:
        return sorted(self._ejected)

    def in_flight_report(self, complete: bool, budget: int, seq: int = 0) -> _pb.LocalInFlight | None:
        """This client's in-flight counts to report as report number ``seq``: every server's
        not at 0 (``complete``), else those that changed since the last report, at most
        ``budget`` servers (the rest stay for the next report); None when there is nothing to say."""
        if self.deleted or self.strategy is None:
            self.dirty.clear()
            return None
        if complete:
            counts = {s.id: s.in_flight for s in self.servers.values() if s.in_flight}
            if not counts and not self.reported:
                self.dirty.clear()
                return None
            if len(counts) <= budget:
                self.reported, self.dirty = counts, set()
                self._sent(seq, dict(counts), True)
                return _pb.LocalInFlight(pool=self.name, server_ids=counts, counts=counts.values(), complete=True)
            self.dirty.update(counts)  # too many for one report: as changes, over several
            self.dirty.update(self.reported)
        ids: list[str] = []
        values: list[int] = []
        reported, servers, dirty = self.reported, self.servers, self.dirty
        while dirty and len(ids) < budget:
            sid = dirty.pop()
            server = servers.get(sid)
            count = server.in_flight if server is not None else 0
            if count != reported.get(sid, 0):
                ids.append(sid)
                values.append(count)
                if count:
                    reported[sid] = count
                else:
                    del reported[sid]
        if not ids:
            return None
        self._sent(seq, dict(zip(ids, values, strict=True)), False)
        return _pb.LocalInFlight(pool=self.name, server_ids=ids, counts=values)


class LocalChoice(NamedTuple):
    """A local decision as `select` answers it (see `Selection`)."""

    decision_id: str
    server: Backend
    strategy: str
    explored: bool
    version: int
    stale: bool


class OutcomeSampler:
    """Keeps the outcomes of local decisions sent near ``rate`` per second, all pools together.

    Below the rate every outcome is sent. Above it each is kept with probability
    ``p = rate / max(outcomes in the last second, outcomes so far in this one)`` and
    carries ``sample_weight = 1 / p``, so the service's counts stay right and its
    averages unbiased (a uniform sample), while its work no longer grows with the
    client's traffic: a client at 100,000 decisions/s costs the service what one at
    ``rate`` does. In a window that starts with a burst, the sent count grows as
    ``rate * (1 + ln(n / rate))``, not as ``n``.
    """

    __slots__ = ("_clock", "_count", "_last", "_rate", "_rng", "_window_end")

    def __init__(self, rate: float, rng: random.Random, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._rng = rng
        self._clock = clock
        self._window_end = -math.inf
        self._count = 0  # outcomes in the current one-second window
        self._last = 0  # outcomes in the window before it (0 when that was not the previous second)

    def take(self) -> float:
        """The weight of this outcome when it is sent (>= 1), 0.0 when it is left out."""
        now = self._clock()
        if now >= self._window_end:
            self._last = self._count if now < self._window_end + 1.0 else 0
            self._count = 0
            self._window_end = now + 1.0
        self._count += 1
        busiest = max(self._last, self._count)
        if busiest <= self._rate:
            return 1.0
        p = self._rate / busiest
        return 1.0 / p if self._rng.random() < p else 0.0


class Gaps:
    """The last ``size`` gaps between events, for their percentiles: how fresh local decisions are.

    ``mark(now)`` records the time since the previous mark. Cheap on the hot path: one
    subtraction and a ring write.
    """

    __slots__ = ("_gaps", "_last", "_next", "_size")

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._gaps: list[float] = []
        self._next = 0
        self._last: float | None = None

    def mark(self, now: float) -> None:
        last, self._last = self._last, now
        if last is not None:
            self.add(now - last)

    def add(self, seconds: float) -> None:
        """Records one gap directly (e.g. a table's age when it arrived)."""
        if len(self._gaps) < self._size:
            self._gaps.append(seconds)
        else:
            self._gaps[self._next] = seconds
            self._next = (self._next + 1) % self._size

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the recorded gaps, ms; 0.0 with none."""
        if not self._gaps:
            return 0.0
        ordered = sorted(self._gaps)
        return 1000.0 * ordered[min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1)]


class RouteTables:
    """The watched pools' tables, local decisions and their pending outcomes; thread-safe.

    Args:
        clock: Monotonic clock, seconds.
        wall: Wall clock, seconds since the epoch: a table's age is ``wall()`` less its
            ``generated_at`` (the service's wall clock; meaningful on one machine or
            with synchronised clocks).
        rng: Randomness of the local strategies (seed it in tests).
        stale_after_s: Tables count as stale this long after their stream broke.
        max_table_servers: Servers a table may hold; a larger one is rejected.
        outcome_rate: Outcomes of local decisions sent per second, at most about; beyond
            it a uniform sample is sent, each standing for 1/p (`OutcomeSampler`).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        stale_after_s: float = 5.0,
        max_table_servers: int = DEFAULT_MAX_TABLE_SERVERS,
        outcome_rate: float = DEFAULT_OUTCOME_RATE,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self.stale_after_s = stale_after_s
        self.max_table_servers = max_table_servers
        self._lock = threading.Lock()
        self._sampler = OutcomeSampler(outcome_rate, self._rng, clock)
        self.pools: dict[str, LocalPool] = {}
        self._pending: OrderedDict[str, LocalDecision] = OrderedDict()
        self._next_id = 0
        self.connected = False
        self._lost_at: float | None = None
        self.rejected = 0  # tables refused as malformed
        self.ignored = 0  # changes to another version, waiting for the whole table
        self.decisions = 0  # local decisions made (the last id's number)
        self.stale_decisions = 0
        self.instance = secrets.token_hex(8)  # names this client's in-flight counts at the service
        self._moved = False  # an in-flight count moved since the last report
        self.wake_sender = False  # set by the first move after a report: the caller wakes the outcome sender
        self._last_report = -math.inf
        self._refresh_at = -math.inf
        self.in_flight_seq = 0  # the number of the report in_flight_report or in_flight_goodbye returned last
        # How fresh the view is: time between two tables (or changes) taken, and between two
        # in-flight reports sent. While counts move, both should be near their intervals
        # (the service's route_push_interval_ms, IN_FLIGHT_INTERVAL_S); more means late.
        self.table_gaps = Gaps()
        self.report_gaps = Gaps()
        # And how long a table took from its build at the service to being taken here.
        self.table_ages = Gaps()

    # --- the stream's side ---------------------------------------------------------

    def apply(self, table: _pb.RouteTable, watched: Collection[str]) -> bool:
        """Takes a table from the stream that watches ``watched``; False (counted, logged) when
        it is rejected (malformed, or for a pool not watched) or ignored."""
        with self._lock:
            if table.pool not in watched:
                self.rejected += 1
                _log.warning("routing table of pool %r rejected: the stream does not watch it", table.pool[:80])
                return False
            pool = self.pools.get(table.pool)
            if pool is None:
                pool = LocalPool(table.pool, self._rng, self._clock)
            try:
                taken = pool.apply(table, self.max_table_servers)
            except TableRejected as err:
                self.rejected += 1
                _log.warning(
                    "routing table of pool %r rejected, keeping version %d: %s", table.pool[:80], pool.version, err
                )
                return False
            if not taken:
                self.ignored += 1
                return False
            self.pools[table.pool] = pool
            self.table_gaps.mark(self._clock())
            if table.HasField("generated_at"):
                built = table.generated_at
                self.table_ages.add(max(0.0, self._wall() - built.seconds - built.nanos * 1e-9))
            return True

    def stream_up(self) -> None:
        with self._lock:
            self.connected, self._lost_at = True, None
            self._refresh_at = -math.inf  # a service that restarted knows none of this client's counts
            self._mark_moved()

    def stream_down(self) -> None:
        with self._lock:
            if self.connected or self._lost_at is None:
                self._lost_at = self._clock()
            self.connected = False

    def stale(self) -> bool:
        """True when the tables are older than `stale_after_s` since their stream broke."""
        lost = self._lost_at
        return lost is not None and self._clock() - lost >= self.stale_after_s

    def has(self, pool: str) -> bool:
        found = self.pools.get(pool)
        return found is not None and not found.deleted and found.strategy is not None

    # --- the caller's side -----------------------------------------------------------

    def decide(self, pool_name: str, exclude: Collection[str] = ()) -> LocalChoice | None:
        """A local decision for `pool_name`; None when there is no table or no candidate."""
        pool = self.pools.get(pool_name)  # one dict read: atomic, no lock needed
        if pool is None:
            return None
        now = self._clock()
        with self._lock:
            chosen = pool.choose(exclude, now)
            if chosen is None:
                return None
            server, explored, memo = chosen
            if not self._moved:
                self._mark_moved()
            self._next_id = n = self._next_id + 1
            decision_id = LOCAL_ID_PREFIX + str(n)
            pending = self._pending
            pending[decision_id] = LocalDecision(pool_name, server, memo, pool.version, explored, now)
            if n % _EXPIRY_EVERY == 0 or len(pending) > MAX_LOCAL_PENDING:
                self._expire(now)
            lost = self._lost_at
            stale = lost is not None and now - lost >= self.stale_after_s
            self.decisions = n
            if stale:
                self.stale_decisions += 1
            return LocalChoice(decision_id, server, pool.strategy_name, explored, pool.version, stale)

    def finish(self, decision_id: str, success: bool, latency_ms: float, status: str) -> _pb.Outcome | None:
        """Settles a local decision; returns the outcome to send, None when it is unknown or
        left out of the sample (see `OutcomeSampler`)."""
        with self._lock:
            decision = self._pending.pop(decision_id, None)
            if decision is None:
                return None
            pool = self.pools.get(decision.pool)
            if pool is not None and pool.strategy is not None:
                pool.finish(decision, success, latency_ms, self._clock)
                self._mark_moved()
            weight = self._sampler.take()
            if not weight:
                return None
            features: tuple[float, ...] = ()
            state = ""
            if pool is not None and pool.strategy is not None:
                features, state = pool.strategy.memo_wire(decision.memo)
        # Built in place (one message object, not two): this runs for every outcome sent.
        outcome = _pb.Outcome(success=success, latency_ms=latency_ms)
        if status:
            outcome.status = status
        local = outcome.local
        local.pool = decision.pool
        local.server_id = decision.server.id
        local.table_version = decision.version
        if features:
            local.features.extend(features)
        if state:
            local.state = state
        if decision.explored:
            local.explored = True
        if weight != 1.0:
            local.sample_weight = weight
        return outcome

    def _expire(self, now: float) -> None:
        # Caller holds the lock. Settles decisions whose outcome never came, oldest first.
        pending = self._pending
        while pending:
            first = next(iter(pending.values()))
            if len(pending) <= MAX_LOCAL_PENDING and first.at + LOCAL_DECISION_TTL_S >= now:
                break
            pending.popitem(last=False)
            first.server.ended(None, False)
            pool = self.pools.get(first.pool)
            if pool is not None:  # settled as the service settles an expired decision: a failure, unlearned
                pool.dirty.add(first.server.id)
                self._mark_moved()
                pool.settle(first, LOCAL_DECISION_TTL_S * 1000.0)

    # --- what the outcome sender reports ---------------------------------------------

    def _mark_moved(self) -> None:
        # Caller holds the lock. The first move after a report asks the caller to wake the
        # sender, which may be asleep with nothing due.
        if not self._moved:
            self._moved = self.wake_sender = True

    def in_flight_due(self) -> float | None:
        """Seconds until an in-flight report is due (0.0: now); None while there is nothing
        to report (no count moved, none to refresh)."""
        with self._lock:
            now = self._clock()
            if self._moved:
                return max(0.0, self._last_report + IN_FLIGHT_INTERVAL_S - now)
            if any(pool.reported for pool in self.pools.values()):
                return max(0.0, self._refresh_at - now)
            return None

    def in_flight_lost(self) -> None:
        """The last report may not have arrived (its send failed, or the service restarted):
        the next one says every count."""
        with self._lock:
            self._refresh_at = -math.inf
            self._mark_moved()

    def in_flight_goodbye(self) -> list[_pb.LocalInFlight]:
        """What a closing client sends last: every pool it reported counts in, with none
        (its requests left in flight will never report an outcome)."""
        with self._lock:
            out = [
                _pb.LocalInFlight(pool=name, complete=True)
                for name, pool in self.pools.items()
                if pool.reported and not pool.deleted
            ][:MAX_IN_FLIGHT_POOLS]
            self.in_flight_seq += 1
            for pool in self.pools.values():
                pool.reported, pool.dirty = {}, set()
                pool._sent(self.in_flight_seq, {}, True)  # noqa: SLF001 - the pools are this class's own
            self._moved = False
            return out

    def in_flight_report(self) -> list[_pb.LocalInFlight]:
        """The counts to send now (see `LocalPool.in_flight_report`), within the contract's
        bounds; every count again when the refresh is due."""
        with self._lock:
            now = self._clock()
            complete = now >= self._refresh_at
            if complete:
                self._refresh_at = now + IN_FLIGHT_REFRESH_S
            self._moved = self.wake_sender = False
            self._last_report = now
            self.report_gaps.mark(now)
            self.in_flight_seq = seq = self.in_flight_seq + 1
            out: list[_pb.LocalInFlight] = []
            budget = MAX_IN_FLIGHT_SERVERS
            for pool in self.pools.values():
                if len(out) >= MAX_IN_FLIGHT_POOLS:
                    self._moved = True  # the rest next time
                    break
                entry = pool.in_flight_report(complete, budget, seq) if budget else None
                if entry is not None:
                    out.append(entry)
                    budget -= len(entry.server_ids)
                if pool.dirty:
                    self._moved = True  # over the budget: the rest next time
            return out

    def stats(self) -> Mapping[str, float]:
        with self._lock:
            return {
                "pools": float(len(self.pools)),
                "decisions": float(self.decisions),
                "stale_decisions": float(self.stale_decisions),
                "rejected_tables": float(self.rejected),
                "ignored_changes": float(self.ignored),
                "pending": float(len(self._pending)),
                "table_gap_p50_ms": self.table_gaps.percentile_ms(50),
                "table_gap_p99_ms": self.table_gaps.percentile_ms(99),
                "report_gap_p50_ms": self.report_gaps.percentile_ms(50),
                "report_gap_p99_ms": self.report_gaps.percentile_ms(99),
                "table_age_p50_ms": self.table_ages.percentile_ms(50),
                "table_age_p99_ms": self.table_ages.percentile_ms(99),
            }
