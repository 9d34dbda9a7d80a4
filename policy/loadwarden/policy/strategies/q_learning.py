"""Tabular Q-learning over whole-pool load states (the seed-002 RL balancer).

State: every pool server's load level (0 low, 1 medium, 2 high; see ``LoadLevels``)
in server-id order, written ``"s1=0,s2=2,s3=1"``; a server whose load cannot be
encoded (never reported, or stale) is at level 2, the seed's fallback for state
encoding errors. Action: the chosen server.
Reward: ``-latency_ms / 10``, or ``-1000`` for a failure or an expired decision.
Each outcome applies the Bellman update

    Q(s, a) += alpha * (r + gamma * max_a' Q(s', a') - Q(s, a))

where ``s`` is the state at the decision (carried in the memo) and ``s'`` the state
when the outcome arrives, maximised over the pool's current servers. Choices are
ε-greedy with ε decaying per update to a floor.

Two additions make the seed's agent work when many decisions are in flight
(both can be turned off, see ``QLearningParams``): a pair not learned yet is
valued at the server's mean value rather than 0, and each decision still
pending on (s, a) makes a look worse in s (a "virtual loss"). Without them,
outcomes that arrive late let greedy choices pile onto one server: 0 is
optimistic when every reward is negative, and a state's level 2 cannot tell
10 queued requests from 1000.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._model import Backend
from ._base import Choice, Feedback, StrategyBase, StrategyContext
from ._state import (
    UNKNOWN_LOAD,
    ActionMeans,
    EpsilonGreedy,
    LoadLevels,
    check_exploration,
    check_int,
    check_range,
    pick_best,
    read_head,
    read_mapping,
    read_q_row,
    read_state,
    recent_reward,
    snapshot_head,
    state_ids,
    state_key,
)

# 3^10 = 59049 states: still storable, though few of them are ever visited.
MAX_SERVERS = 10
TOO_LARGE_HINT = (
    f"strategy 'q_learning' keeps a Q-table row per whole-pool load state (3^N states for N servers) "
    f"and serves at most {MAX_SERVERS} servers; use strategy 'q_linear', which learns per-server "
    f"values and scales to large pools"
)
LATENCY_PER_REWARD_MS = 10.0
FAILURE_REWARD = -1000.0
INITIAL_Q = ("action_mean", "zero")
# Pending decisions beyond this add no further virtual loss (keeps the power finite).
MAX_VIRTUAL_LOSSES = 500
# Q-table rows ``published`` holds: the latest updated states (and the current one).
PUBLISHED_ROWS = 64
# Rows a client instance keeps from what it adopted, least recently pushed dropped first.
ADOPTED_ROWS = 4_096


@dataclass(frozen=True, slots=True)
class QLearningParams:
    """Q-learning parameters (alpha to epsilon_decay and the thresholds: seed-002 defaults).

    Attributes:
        alpha: Learning rate, (0, 1].
        gamma: Discount factor, [0, 1).
        epsilon: Starting exploration probability, [0, 1].
        epsilon_decay: Factor applied to epsilon after every update, (0, 1].
        epsilon_min: Floor of epsilon, [0, epsilon].
        cpu_medium_percent: CPU % from which a server is at level 1, (0, 100].
        cpu_high_percent: CPU % from which it is at level 2, above cpu_medium_percent, at most 100.
        active_medium_requests: Active requests from which a server is at level 1, >= 1.
        active_high_requests: Active requests for level 2, above active_medium_requests.
        response_medium_ms: Response time (ms) from which a server is at level 1, > 0.
        response_high_ms: Response time (ms) for level 2, above response_medium_ms.
        initial_q: Value of a (state, server) pair not learned yet: ``"action_mean"``,
            the server's mean over the states where it was learned (the mean of all
            values for a server never learned; 0 in an empty table), or ``"zero"``,
            the seed's default.
        virtual_loss: When choosing, Q(s, a) (never positive) is multiplied by
            ``(1 + virtual_loss) ** pending(s, a)``, the decisions on (s, a) still
            awaiting an outcome, [0, 1]; 0 is the seed's plain argmax.
        unknown_load: A server whose load cannot be encoded (never reported, or a
            stale report) is at level 2 with ``"high"``, the seed's fallback; with
            ``"known_metrics"`` its level comes from in-flight requests and outcome
            latency alone, its CPU read as 0.
    """

    alpha: float = 0.1
    gamma: float = 0.9
    epsilon: float = 0.1
    epsilon_decay: float = 0.995
    epsilon_min: float = 0.01
    cpu_medium_percent: float = 50.0
    cpu_high_percent: float = 80.0
    active_medium_requests: int = 5
    active_high_requests: int = 10
    response_medium_ms: float = 100.0
    response_high_ms: float = 200.0
    initial_q: str = "action_mean"
    virtual_loss: float = 0.1
    unknown_load: str = "high"

    def __post_init__(self) -> None:
        check_exploration(self.alpha, self.epsilon, self.epsilon_decay, self.epsilon_min)
        check_range("gamma", self.gamma, 0.0, 1.0, high_open=True)
        check_range("cpu_medium_percent", self.cpu_medium_percent, 0.0, 100.0, low_open=True)
        check_range("cpu_high_percent", self.cpu_high_percent, self.cpu_medium_percent, 100.0, low_open=True)
        check_int("active_medium_requests", self.active_medium_requests, 1, 1_000_000)
        check_int("active_high_requests", self.active_high_requests, self.active_medium_requests + 1, 1_000_001)
        check_range("response_medium_ms", self.response_medium_ms, 0.0, 3_600_000.0, low_open=True)
        check_range("response_high_ms", self.response_high_ms, self.response_medium_ms, 3_600_000.0, low_open=True)
        if self.initial_q not in INITIAL_Q:
            raise ValueError(f"initial_q: must be one of {', '.join(INITIAL_Q)}, got {self.initial_q!r}")
        check_range("virtual_loss", self.virtual_loss, 0.0, 1.0)
        if self.unknown_load not in UNKNOWN_LOAD:
            raise ValueError(f"unknown_load: must be one of {', '.join(UNKNOWN_LOAD)}, got {self.unknown_load!r}")


class QLearning(StrategyBase):
    """ε-greedy tabular Q-learning; safe to call from several threads.

    ``Choice.memo`` is ``(generation, state)``. The table holds states over the
    pool's current servers only: a change of membership drops the rows of the old
    one (and the generation, so older memos teach nothing): at most 3^N rows.
    """

    name = "q_learning"
    max_servers = MAX_SERVERS
    too_large_hint = TOO_LARGE_HINT
    Params = QLearningParams

    def __init__(self, params: QLearningParams, context: StrategyContext) -> None:
        self._p = params
        self._rng = context.rng
        self._clock = context.clock
        self._servers = context.servers
        self._levels = LoadLevels(
            (params.cpu_medium_percent, params.cpu_high_percent),
            (params.active_medium_requests, params.active_high_requests),
            (params.response_medium_ms, params.response_high_ms),
            unknown_high=params.unknown_load == "high",
        )
        self._eps = EpsilonGreedy(params.epsilon, params.epsilon_decay, params.epsilon_min)
        self._lock = threading.Lock()
        self._table: dict[str, dict[str, float]] = {}  # state -> server id -> Q
        self._ids: tuple[str, ...] = ()  # the pool's server ids, sorted
        self._keys: dict[tuple[int, ...], str] = {}  # levels -> state, for self._ids
        self._generation = 0  # bumped on membership change; older memos are not learned from
        self._pending: dict[tuple[str, str], int] = {}  # (state, server id) -> decisions awaiting outcome
        self._means = ActionMeans()  # the "action_mean" prior
        self._episodes = self._updates = self._explored = 0
        self._recent_reward: float | None = None

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        rng = self._rng
        with self._lock:
            state = self._encode()
            explored = self._eps.explore(rng)
            if explored:
                self._explored += 1
                server = candidates[rng.randrange(len(candidates))]
            else:
                row = self._table.get(state, {})
                pending, loss = self._pending, 1.0 + self._p.virtual_loss
                scored = []
                for cand in candidates:
                    times = min(pending.get((state, cand.id), 0), MAX_VIRTUAL_LOSSES)
                    scored.append((self._q(row, cand.id) * loss**times, cand))
                server = pick_best(scored, rng)
            key = (state, server.id)
            self._pending[key] = self._pending.get(key, 0) + 1
            return Choice(server, explored, (self._generation, state))

    def observe(self, feedback: Feedback) -> None:
        with self._lock:
            self._episodes += 1
            next_state = self._encode()
            memo, action = feedback.memo, feedback.server.id
            if not (
                isinstance(memo, tuple) and len(memo) == 2 and memo[0] == self._generation and isinstance(memo[1], str)
            ):
                return  # decided under another membership (or by another strategy)
            state = memo[1]
            left = self._pending.pop((state, action), 1) - 1
            if left > 0:
                self._pending[(state, action)] = left
            if feedback.success and not feedback.expired:
                reward = -feedback.latency_ms / LATENCY_PER_REWARD_MS
            else:
                reward = FAILURE_REWARD
            self._recent_reward = recent_reward(self._recent_reward, reward)
            next_row = self._table.get(next_state, {})
            best_next = max((self._q(next_row, sid) for sid in self._ids), default=0.0)
            row = self._table.pop(state, None) or {}
            self._table[state] = row  # the table keeps rows in the order they were last updated
            old = row.get(action)
            q = self._q(row, action)
            q += self._p.alpha * (reward + self._p.gamma * best_next - q)
            if not math.isfinite(q):
                return
            row[action] = q
            self._means.set(action, q, old)
            self._updates += 1
            self._eps.step()

    def forget(self, server_id: str) -> None:
        with self._lock:
            self._sync_members()

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {
                "episodes": float(self._episodes),
                "updates": float(self._updates),
                "epsilon": self._eps.value,
                "table_size": float(len(self._table)),
                "explored": float(self._explored),
                "recent_reward": self._recent_reward or 0.0,
            }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = (self._episodes, self._updates, self._explored)
            return {
                **snapshot_head(self.name, self._eps.value, counts),
                "q_table": {state: dict(row) for state, row in self._table.items()},
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        epsilon, counts, table = self._read(state)
        with self._lock:
            self._eps.value = epsilon
            self._episodes, self._updates, self._explored = counts
            self._table = table
            self._sync_members()
            if self._ids:  # an empty pool keeps every row until its servers join
                self._prune()
            self._means.recount(self._table)

    # --- deciding in the client ------------------------------------------------------

    def published(self) -> dict[str, Any]:
        """The snapshot with at most PUBLISHED_ROWS + 1 rows: the latest updated states and
        the current one, so what a client receives stays small whatever the table holds."""
        with self._lock:
            current = self._encode()
            latest = list(self._table.items())[-PUBLISHED_ROWS:]
            rows = {state: dict(row) for state, row in latest}
            if current in self._table:
                rows[current] = dict(self._table[current])
            counts = (self._episodes, self._updates, self._explored)
            return {**snapshot_head(self.name, self._eps.value, counts), "q_table": rows}

    def adopt(self, published: Mapping[str, Any]) -> None:
        """Takes the service's epsilon and rows, keeping rows adopted earlier (at most
        ADOPTED_ROWS, the least recently pushed dropped first); counters stay this instance's."""
        epsilon, _, rows = self._read(published)
        with self._lock:
            self._eps.value = epsilon
            for state, row in rows.items():
                self._table.pop(state, None)
                self._table[state] = row
            self._sync_members()
            self._prune()
            for state in list(self._table)[: max(0, len(self._table) - ADOPTED_ROWS)]:
                del self._table[state]
            self._means.recount(self._table)

    def finished(self, feedback: Feedback) -> None:
        """Settles the decision's virtual loss; the service's instance learns from the outcome."""
        memo = feedback.memo
        if not (isinstance(memo, tuple) and len(memo) == 2 and isinstance(memo[1], str)):
            return
        with self._lock:
            if memo[0] != self._generation:
                return
            key = (memo[1], feedback.server.id)
            left = self._pending.pop(key, 1) - 1
            if left > 0:
                self._pending[key] = left

    def memo_wire(self, memo: Any) -> tuple[tuple[float, ...], str]:
        ok = isinstance(memo, tuple) and len(memo) == 2 and isinstance(memo[1], str)
        return ((), memo[1]) if ok else ((), "")

    def memo_from_wire(self, features: Sequence[float], state: str) -> Any:
        """``(generation, state)`` when ``state`` is a well-formed state of the current servers."""
        try:
            ids = read_state(state, MAX_SERVERS, "state")
        except ValueError:
            return None
        with self._lock:
            self._sync_members()
            return (self._generation, state) if ids == self._ids else None

    def _read(self, state: Mapping[str, Any]) -> tuple[float, list[int], dict[str, dict[str, float]]]:
        body, epsilon, counts = read_head(state, self.name, ("q_table",))
        rows = read_mapping(body["q_table"], "q_table").items()
        table = {key: read_q_row(key, row, MAX_SERVERS, f"q_table[{key!r}]") for key, row in rows}
        return epsilon, counts, table

    # --- values --------------------------------------------------------------------

    def _q(self, row: Mapping[str, float], action: str) -> float:
        q = row.get(action)
        if q is not None:
            return q
        return 0.0 if self._p.initial_q == "zero" else self._means.mean(action)

    # --- state encoding ------------------------------------------------------------

    def _encode(self) -> str:
        servers = self._servers
        if len(servers) != len(self._ids) or any(sid not in servers for sid in self._ids):
            self._sync_members()
        level, now = self._levels.level, self._clock.monotonic()
        levels = tuple(level(servers[sid], now) for sid in self._ids)
        state = self._keys.get(levels)
        if state is None:
            state = self._keys[levels] = state_key(self._ids, levels)
        return state

    def _sync_members(self) -> None:
        ids = tuple(sorted(self._servers))
        if ids != self._ids:
            self._ids, self._keys, self._pending = ids, {}, {}
            self._generation += 1
            self._prune()
            self._means.recount(self._table)

    def _prune(self) -> None:
        self._table = {s: row for s, row in self._table.items() if state_ids(s) == self._ids}
