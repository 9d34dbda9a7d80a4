"""What the learning strategies share: load levels, the ε schedule, and strict checks.

Params checks raise ``ValueError("field: problem")`` (``parse_params`` anchors the
field under the pool); snapshot checks raise ``ValueError("key: problem")``,
because snapshots come from files that may be corrupt.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .._model import Backend

SNAPSHOT_VERSION = 1
# A server id as the service accepts it (see _validation.NAME_CHARS).
SERVER_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
T = TypeVar("T")


def check_range(
    name: str, value: float, low: float, high: float, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Raises ``ValueError("name: ...")`` unless ``value`` is finite and inside the interval."""
    ok = math.isfinite(value) and (low < value if low_open else low <= value)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name}: must be in {interval}, got {value!r}")


def check_int(name: str, value: int, low: int, high: int) -> None:
    """Raises ``ValueError("name: ...")`` unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: must be an integer in [{low}, {high}], got {value!r}")


def check_exploration(alpha: float, epsilon: float, epsilon_decay: float, epsilon_min: float) -> None:
    """The learning-rate and ε-greedy params both learning strategies take."""
    check_range("alpha", alpha, 0.0, 1.0, low_open=True)
    check_range("epsilon", epsilon, 0.0, 1.0)
    check_range("epsilon_decay", epsilon_decay, 0.0, 1.0, low_open=True)
    check_range("epsilon_min", epsilon_min, 0.0, 1.0)
    if epsilon_min > epsilon:
        raise ValueError(f"epsilon_min: must not exceed epsilon ({epsilon:g}), got {epsilon_min!r}")


class LoadLevels:
    """Maps a server to load level 0 (low), 1 (medium) or 2 (high).

    Each metric is compared with its two thresholds (below ``medium`` is 0, below
    ``high`` is 1, else 2) and the worst metric wins. A server whose load cannot be
    encoded (it never reported, or its report went stale) is at level 2, the seed's
    fallback, when ``unknown_high``; otherwise its level comes from what is known
    (CPU counts as 0; in-flight requests and outcome latency as measured).
    """

    __slots__ = ("_active", "_cpu", "_response", "_unknown_high")

    def __init__(
        self,
        cpu_percent: tuple[float, float],
        active_requests: tuple[int, int],
        response_ms: tuple[float, float],
        *,
        unknown_high: bool = True,
    ) -> None:
        self._cpu = cpu_percent
        self._active = active_requests
        self._response = response_ms
        self._unknown_high = unknown_high

    def level(self, server: Backend, now: float) -> int:
        """The level at monotonic time ``now`` (requests long overdue count as latency)."""
        if self._unknown_high and unknown_load(server):
            return 2
        cpu, active, response = server.cpu_percent, server.active_requests, server.response_time_ms
        response = max(response, server.overdue_ms(now, server.usual_latency_ms))
        if cpu >= self._cpu[1] or active >= self._active[1] or response >= self._response[1]:
            return 2
        if cpu >= self._cpu[0] or active >= self._active[0] or response >= self._response[0]:
            return 1
        return 0


# How a learning strategy treats a server whose load cannot be encoded.
UNKNOWN_LOAD = ("high", "known_metrics")


def unknown_load(server: Backend) -> bool:
    """True when ``server``'s load cannot be encoded: it never reported, or its report went
    stale (the pool marks a stale server not routable; a drained one keeps its load)."""
    return server.load is None or not (server.routable or server.draining)


def state_key(ids: Sequence[str], levels: Sequence[int]) -> str:
    """A whole-pool state as text: ``"s1=0,s2=2,s3=1"`` (ids sorted)."""
    return ",".join(f"{sid}={level}" for sid, level in zip(ids, levels, strict=True))


def state_ids(state: str) -> tuple[str, ...]:
    """The server ids of a well-formed ``state_key``."""
    return tuple(part[:-2] for part in state.split(",")) if state else ()


def read_state(state: str, max_servers: int, where: str) -> tuple[str, ...]:
    """Checks a ``state_key`` read from a snapshot; returns its server ids."""
    parts = state.split(",")
    if not state or len(parts) > max_servers:
        raise ValueError(f"{where}: a state names 1 to {max_servers} servers")
    for part in parts:
        sid, eq, level = part.rpartition("=")
        if not eq or level not in ("0", "1", "2"):
            raise ValueError(f"{where}: each part must be '<server id>=<level 0-2>', got {part!r}")
        read_server_id(sid, where)
    ids = state_ids(state)
    if list(ids) != sorted(set(ids)):
        raise ValueError(f"{where}: server ids must be unique and sorted")
    return ids


def read_q_row(state: str, row: Any, max_servers: int, where: str) -> dict[str, float]:
    """Checks one Q-table row read from a snapshot: a state and its values per server."""
    ids = read_state(state, max_servers, where)
    values = read_mapping(row, where)
    for sid in values:
        if sid not in ids:
            raise ValueError(f"{where}: server {sid!r} is not part of the state")
    return {sid: read_float(q, f"{where}[{sid!r}]") for sid, q in values.items()}


class ActionMeans:
    """Mean Q-value per server over the states where it was learned, kept as sums and counts."""

    __slots__ = ("_all", "_per")

    def __init__(self) -> None:
        self._per: dict[str, list[float]] = {}  # server id -> [sum, count]
        self._all = [0.0, 0.0]

    def mean(self, action: str) -> float:
        """The server's mean; the mean of all values for a server never learned; 0 when empty."""
        total, n = self._per.get(action) or self._all
        return total / n if n else 0.0

    def set(self, action: str, new: float, old: float | None) -> None:
        """Records that a value changed from ``old`` (None: a new entry) to ``new``."""
        per = self._per.setdefault(action, [0.0, 0.0])
        for stats in (per, self._all):
            stats[0] += new - (old or 0.0)
            stats[1] += 1.0 if old is None else 0.0

    def recount(self, table: Mapping[str, Mapping[str, float]]) -> None:
        self._per, self._all = {}, [0.0, 0.0]
        for row in table.values():
            for action, q in row.items():
                self.set(action, q, None)


class EpsilonGreedy:
    """ε for ε-greedy: multiplied by ``decay`` on every update, never below ``floor``."""

    __slots__ = ("_decay", "_floor", "value")

    def __init__(self, start: float, decay: float, floor: float) -> None:
        self.value = start
        self._decay = decay
        self._floor = floor

    def explore(self, rng: random.Random) -> bool:
        return self.value > 0.0 and rng.random() < self.value

    def step(self) -> None:
        self.value = max(self._floor, self.value * self._decay)


def pick_best(items: Iterable[tuple[float, T]], rng: random.Random) -> T:
    """The item with the highest score; ties broken uniformly at random. ``items`` is not empty."""
    it = iter(items)
    best_score, best = next(it)
    ties = 1
    for score, item in it:
        if score > best_score:
            best, best_score, ties = item, score, 1
        elif score == best_score:
            ties += 1
            # Reservoir sampling: each tied item ends up chosen with probability 1/ties.
            if rng.random() * ties < 1.0:
                best = item
    return best


# --- snapshot checks -------------------------------------------------------------


COUNTERS = ("episodes", "updates", "explored")


def snapshot_head(strategy: str, epsilon: float, counts: Sequence[int]) -> dict[str, Any]:
    """The fields every learning snapshot starts with; ``counts`` follow ``COUNTERS``."""
    return {
        "strategy": strategy,
        "version": SNAPSHOT_VERSION,
        "epsilon": epsilon,
        **dict(zip(COUNTERS, counts, strict=True)),
    }


def read_head(state: Any, strategy: str, keys: Iterable[str]) -> tuple[Mapping[str, Any], float, list[int]]:
    """Checks a snapshot's envelope and ``snapshot_head`` fields; ``keys`` are the strategy's own.

    Returns:
        The snapshot, its epsilon and its counts (in ``COUNTERS`` order).
    """
    body = snapshot_body(state, strategy, ("epsilon", *COUNTERS, *keys))
    counts = [read_count(body[key], key) for key in COUNTERS]
    return body, read_float(body["epsilon"], "epsilon", 0.0, 1.0), counts


def snapshot_body(state: Any, strategy: str, keys: Iterable[str]) -> Mapping[str, Any]:
    """Checks the envelope (a mapping with exactly ``keys``, this strategy and version)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"snapshot: must be a mapping, got {type(state).__name__}")
    expected = {"strategy", "version", *keys}
    if set(state) != expected:
        missing = sorted(expected - set(state))
        extra = sorted(str(k) for k in set(state) - expected)
        raise ValueError(f"snapshot: keys do not fit {strategy}; missing {missing}, unexpected {extra}")
    if state["strategy"] != strategy:
        raise ValueError(f"strategy: snapshot is for {state['strategy']!r}, not {strategy!r}")
    if type(state["version"]) is not int or state["version"] != SNAPSHOT_VERSION:
        raise ValueError(f"version: must be {SNAPSHOT_VERSION}, got {state['version']!r}")
    return state


def read_float(value: Any, key: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite number (bool is not a number here) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}: must be a number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        bounds = f" in [{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else ""
        raise ValueError(f"{key}: must be a finite number{bounds}, got {number!r}")
    return number


def read_count(value: Any, key: str) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"{key}: must be a non-negative integer, got {value!r}")
    return value


def read_mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{key}: must be a mapping with string keys")
    return value


def read_server_id(value: str, key: str) -> str:
    if not SERVER_ID.fullmatch(value):
        raise ValueError(f"{key}: {value!r} is not a valid server id")
    return value


# Weight of the newest reward in the "recent_reward" statistic (about the last 20 outcomes).
RECENT_REWARD_WEIGHT = 0.05


def recent_reward(previous: float | None, reward: float) -> float:
    """The EWMA of rewards that learning strategies report as ``recent_reward``."""
    return reward if previous is None else previous + RECENT_REWARD_WEIGHT * (reward - previous)
