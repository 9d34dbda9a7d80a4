"""Linear Q-learning over per-server features: learned routing for pools of any size.

``q_learning`` keys its table by the load level of every server, 3^N states, so it
stops at 10 servers. Here each candidate ``a`` is scored on its own:

    Q(a) = w · φ(a) + b_a · q_a,    q_a = 1 + in_flight_a / weight_a

``φ(a)`` are the server's normalised load features (CPU, requests in flight per
unit of weight, response time, error rate), ``w`` is shared by all servers, and
``b_a`` is what a place in the server's line costs, learned per server (a server not
learned yet starts at the mean ``b``; ``UNLEARNED_PLACE_COST`` before any is). In
flight is this process's own count (``in_flight_total``), never the load report's;
its feature, ``ln(1 + in_flight / weight / active_scale_requests)``, does not
saturate where lines grow long, and ``q_a`` is read back from it. Every feature
measures load, so ``w`` and ``b`` stay <= 0 (a positive weight only fits a
correlation and herds onto busy servers). The target is the reward alone
(``-latency_ms / latency_scale_ms``, failures counting at least
``failure_penalty_ms``): a contextual bandit, gamma = 0, since the next decision's
value is nearly the same whichever server this request took.

Updates are normalised LMS (the step divided by q_a² + |φ|², so the prediction moves
``alpha`` of the way to the target), with features and TD error clipped and
non-finite values refused, so one outlier cannot make the weights diverge. A
decision scores at most ``sample_size`` random candidates: O(sample_size) per
choice, O(features) per outcome, whatever the pool size.
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
    EpsilonGreedy,
    check_exploration,
    check_int,
    check_range,
    pick_best,
    read_float,
    read_head,
    read_mapping,
    read_server_id,
    recent_reward,
    snapshot_head,
)

FEATURES = ("cpu", "active", "response", "error_rate")
FEATURE_CLIP = 10.0  # every feature lies in [0, FEATURE_CLIP]
WEIGHT_LIMIT = 1000.0  # every w_i and b_a lies in [-WEIGHT_LIMIT, 0]
# b of every server while none is learned, reward units (latency_scale_ms a place). At 0, lines
# cost nothing: the first servers to answer, the luckiest, drew long lines before their next answer.
UNLEARNED_PLACE_COST = -1.0


@dataclass(frozen=True, slots=True)
class QLinearParams:
    """Linear Q-learning parameters.

    Attributes:
        alpha: Learning rate: the share of the TD error each update removes, (0, 1].
        epsilon: Starting exploration probability, [0, 1].
        epsilon_decay: Factor applied to epsilon after every update, (0, 1].
        epsilon_min: Floor of epsilon, [0, epsilon].
        sample_size: Candidates scored per exploiting decision, 1-10000; all when fewer.
        local_sample_size: The fewest candidates scored per exploiting decision in a
            client deciding locally (``StrategyContext.local``), 0-10000; 0 means
            ``sample_size``.
        local_sample_share: Share of the candidates such a client scores, [0, 1]: it
            scores ``ceil(local_sample_share * candidates)``, at least
            ``local_sample_size`` and at most ``sample_size``; 1.0 (the default)
            scores as many as the service does. Fewer spread clients whose view of
            each other lags by a push, as P2C does, but let a worse server win its
            sample more often than it wins the service's. The simulator favours a few
            (3 of the 5 servers of ``heterogeneous``: local p99 0.98x central, all 5:
            1.16x), the real runs do not: with the clients' in-flight counts exchanged
            (docs/local-decisions-quality.md, session 14), 3 of 5 gave 1.17x, 4 of 5
            1.13x and all 5 1.08x over six seeds pooled, and ``one-slow`` at 1.0 stays
            at 1.00x with success within 0.02 point.
        latency_scale_ms: Latency worth one reward unit; also divides the response-time
            feature, > 0.
        failure_penalty_ms: Latency a failed or expired decision counts as at least, >= 0.
        active_scale_requests: Requests in flight per unit of weight that make the
            ``active`` feature ln 2, > 0.
        td_error_clip: Largest TD error (reward units) one update applies, > 0.
    """

    alpha: float = 0.1
    epsilon: float = 0.1
    epsilon_decay: float = 0.995
    epsilon_min: float = 0.01
    sample_size: int = 8
    local_sample_size: int = 3
    local_sample_share: float = 1.0
    latency_scale_ms: float = 100.0
    failure_penalty_ms: float = 1000.0
    active_scale_requests: float = 10.0
    td_error_clip: float = 10.0

    def __post_init__(self) -> None:
        check_exploration(self.alpha, self.epsilon, self.epsilon_decay, self.epsilon_min)
        check_int("sample_size", self.sample_size, 1, 10_000)
        check_int("local_sample_size", self.local_sample_size, 0, 10_000)
        check_range("local_sample_share", self.local_sample_share, 0.0, 1.0)
        check_range("latency_scale_ms", self.latency_scale_ms, 0.0, 3_600_000.0, low_open=True)
        check_range("failure_penalty_ms", self.failure_penalty_ms, 0.0, 3_600_000.0)
        check_range("active_scale_requests", self.active_scale_requests, 0.0, 1_000_000.0, low_open=True)
        check_range("td_error_clip", self.td_error_clip, 0.0, 1_000_000.0, low_open=True)


class QLinear(StrategyBase):
    """ε-greedy linear Q-learning with a learned cost per place in each line; safe to call from several threads."""

    name = "q_linear"
    max_servers = None
    Params = QLinearParams

    def __init__(self, params: QLinearParams, context: StrategyContext) -> None:
        self._p = params
        self._sample_size = params.sample_size
        self._least_sample = params.sample_size  # scored at least (with the share, in a client)
        self._sample_share = 0.0
        if context.local and params.local_sample_size:
            self._least_sample = min(params.local_sample_size, params.sample_size)
            self._sample_share = params.local_sample_share
        self._rng = context.rng
        self._clock = context.clock
        self._servers = context.servers
        self._eps = EpsilonGreedy(params.epsilon, params.epsilon_decay, params.epsilon_min)
        self._lock = threading.Lock()
        self._w = [0.0] * len(FEATURES)
        self._bias: dict[str, float] = {}
        self._bias_sum = 0.0  # sum of self._bias values: a new server starts at their mean
        self._episodes = self._updates = self._explored = 0
        self._recent_reward: float | None = None
        self._scored = 0  # candidates scored by exploiting decisions: the decision cost

    def choose(self, candidates: Sequence[Backend]) -> Choice:
        rng = self._rng
        now = self._clock.monotonic()
        with self._lock:
            n = len(candidates)
            if self._eps.explore(rng):
                self._explored += 1
                server = candidates[rng.randrange(n)]
                return Choice(server, True, self._features(server, now))
            k = self._sample_size
            if self._sample_share < 1.0 and self._least_sample < k:
                k = min(k, max(self._least_sample, math.ceil(self._sample_share * n)))
            pool = candidates if n <= k else [candidates[i] for i in rng.sample(range(n), k)]
            self._scored += len(pool)
            scored = []
            for server in pool:
                x = self._features(server, now)
                scored.append((self._score(x, server.id), (x, server)))
            x, best = pick_best(scored, rng)
            return Choice(best, False, x)

    def observe(self, feedback: Feedback) -> None:
        p = self._p
        x = feedback.memo
        if not (isinstance(x, tuple) and len(x) == len(FEATURES)):
            return  # not decided by this strategy
        if feedback.success and not feedback.expired:
            reward = -feedback.latency_ms / p.latency_scale_ms
        else:  # never better than a success as slow
            reward = -max(feedback.latency_ms, p.failure_penalty_ms) / p.latency_scale_ms
        if not math.isfinite(reward):
            return
        with self._lock:
            self._episodes += 1
            self._recent_reward = recent_reward(self._recent_reward, reward)
            sid = feedback.server.id
            if sid not in self._servers:
                return  # left the pool; forget() dropped its bias
            td = reward - self._score(x, sid)
            td = max(-p.td_error_clip, min(p.td_error_clip, td))
            q = self._position(x)
            step = p.alpha * td / (q * q + sum(v * v for v in x))
            w = self._w
            for i, v in enumerate(x):
                w[i] = _limit(w[i] + step * v)
            old = self._bias.get(sid)
            new = _limit((self._mean_bias() if old is None else old) + step * q)
            self._bias[sid] = new
            self._bias_sum += new - (old or 0.0)
            self._updates += 1
            self._eps.step()

    def forget(self, server_id: str) -> None:
        with self._lock:
            self._bias_sum -= self._bias.pop(server_id, 0.0)

    def stats(self) -> dict[str, float]:
        with self._lock:
            out = {
                "episodes": float(self._episodes),
                "updates": float(self._updates),
                "epsilon": self._eps.value,
                "explored": float(self._explored),
                "servers_learned": float(len(self._bias)),
                "scored": float(self._scored),
                "recent_reward": self._recent_reward or 0.0,
            }
            out.update({f"weight_{name}": w for name, w in zip(FEATURES, self._w, strict=True)})
            return out

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = (self._episodes, self._updates, self._explored)
            return {
                **snapshot_head(self.name, self._eps.value, counts),
                "weights": dict(zip(FEATURES, self._w, strict=True)),
                "biases": dict(self._bias),
            }

    def restore(self, state: Mapping[str, Any]) -> None:
        epsilon, counts, w, bias = self._read(state)
        with self._lock:
            self._episodes, self._updates, self._explored = counts
            self._take(epsilon, w, bias)

    # --- deciding in the client ------------------------------------------------------

    def published(self) -> dict[str, Any]:
        """The whole snapshot: the weights and every server's bias (about 30 bytes each)."""
        return self.snapshot()

    def adopt(self, published: Mapping[str, Any]) -> None:
        """Takes the service's weights, biases and epsilon; this instance's counters stay its own."""
        epsilon, _, w, bias = self._read(published)
        with self._lock:
            self._take(epsilon, w, bias)

    def memo_wire(self, memo: Any) -> tuple[tuple[float, ...], str]:
        return (memo, "") if isinstance(memo, tuple) and len(memo) == len(FEATURES) else ((), "")

    def memo_from_wire(self, features: Sequence[float], state: str) -> Any:
        if len(features) != len(FEATURES):
            return None
        return tuple(_clip(float(v)) for v in features)

    def _read(self, state: Mapping[str, Any]) -> tuple[float, list[int], list[float], dict[str, float]]:
        body, epsilon, counts = read_head(state, self.name, ("weights", "biases"))
        weights = read_mapping(body["weights"], "weights")
        if set(weights) != set(FEATURES):
            raise ValueError(f"weights: must have exactly the features {', '.join(FEATURES)}")
        w = [read_float(weights[f], f"weights.{f}", -WEIGHT_LIMIT, WEIGHT_LIMIT) for f in FEATURES]
        bias = {
            read_server_id(sid, "biases"): read_float(b, f"biases[{sid!r}]", -WEIGHT_LIMIT, WEIGHT_LIMIT)
            for sid, b in read_mapping(body["biases"], "biases").items()
        }
        return epsilon, counts, w, bias

    def _take(self, epsilon: float, w: list[float], bias: dict[str, float]) -> None:
        # Caller holds the lock. Values above 0 (older snapshots) are taken as 0.
        if self._servers:  # servers that left while the snapshot was stored
            bias = {sid: b for sid, b in bias.items() if sid in self._servers}
        self._eps.value = epsilon
        self._w = [_limit(v) for v in w]
        self._bias = {sid: _limit(b) for sid, b in bias.items()}
        self._bias_sum = math.fsum(self._bias.values())

    # --- model -------------------------------------------------------------------

    def _features(self, server: Backend, now: float) -> tuple[float, ...]:
        p = self._p
        weight = max(server.effective_weight, 1e-3)
        # Requests in flight long past the server's usual latency are latency measured already.
        response = max(server.response_time_ms, server.overdue_ms(now, server.usual_latency_ms))
        return (
            _clip(server.cpu_percent / 100.0),
            _clip(math.log1p(server.in_flight_total / weight / p.active_scale_requests)),
            _clip(response / p.latency_scale_ms),
            _clip(server.error_rate),
        )

    def _position(self, x: tuple[float, ...]) -> float:
        """q: 1 + requests in flight per unit of weight, read back from the ``active`` feature."""
        return 1.0 + math.expm1(x[1]) * self._p.active_scale_requests

    def _score(self, x: tuple[float, ...], server_id: str) -> float:
        b = self._bias.get(server_id)
        per_place = self._mean_bias() if b is None else b
        return sum(w * v for w, v in zip(self._w, x, strict=True)) + per_place * self._position(x)

    def _mean_bias(self) -> float:
        return self._bias_sum / len(self._bias) if self._bias else UNLEARNED_PLACE_COST


def _clip(value: float) -> float:
    # NaN fails both comparisons and becomes 0.
    return value if 0.0 <= value <= FEATURE_CLIP else (FEATURE_CLIP if value > FEATURE_CLIP else 0.0)


def _limit(value: float) -> float:
    return max(-WEIGHT_LIMIT, min(0.0, value))
