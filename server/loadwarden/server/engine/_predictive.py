"""Predictive load management (issue 21, item 3): the capacity planner's forecasts move
batch sizes and adaptive limits ahead of the load. Opt-in, per operation
(``[planning.operations.<name>] predictive``) and per pool (``[planning.pools.<name>]
predictive_limit``); a forecast without a model changes nothing.

**Batch sizes.** After each refresh the planner gives each predictive operation a
``LoadOutlook``: its load score's forecast points (the point values, or the interval's
upper bounds), each speaking for the step it ends, in the core's monotonic clock, with
the bound below them (the interval's lower bound under a point value, the point value
under an upper bound) and the lead time. The kernel's Operation then sizes from the
forecast peak ahead when that bound is above the measured load
(``loadwarden.policy.batching``): a forecast within its own error of the present moves
nothing. Its adjustments say "forecast" and count in ``forecast_adjustments_total``.

**Adaptive limits.** Per predictive-limit pool, from its requests per second at
``step_s`` over the history the planner reads:

- the *surge threshold* is ``median + max(k x 1.4826 x MAD, 20 % of the median)`` of
  the known steps (``k = surge_mads``; 1.4826 x MAD estimates a standard deviation
  that outliers do not move), with at least ``MIN_SURGE_STEPS`` known steps;
- a *surge* is a run of consecutive known steps above the threshold (a gap or a step at
  or below it ends the run); it is *over* once a later known step is at or below it;
- the limit the last surge *settled at* is the pool's concurrency limit as the history
  last recorded it in that surge's final step: where the algorithm had adapted to when
  demand came down;
- a surge is *forecast* when the newest known step is not above the threshold and a
  forecast point within ``limit_lead_s`` is.

When a surge is forecast and the pool's limit is below the level the last one settled
at, the limit moves there (``LimitAlgorithm.start_from``, clamped into its bounds) and
the pool's waiters are dispatched; the algorithm adapts from there. One move per
forecast surge: the pool is not moved again until the forecast start plus
``limit_lead_s`` has passed. A limit several replicas share (one replica computes it)
is left alone, and so is a fixed one.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loadwarden.policy.batching import LoadOutlook
from loadwarden.policy.forecast import Forecast

if TYPE_CHECKING:
    from loadwarden.observability.history import History

    from ._admission import SlotPool

log = logging.getLogger("loadwarden.server")

MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal data
SURGE_MIN_RISE = 0.2  # a surge is at least this share above the median
MIN_SURGE_STEPS = 10  # known demand steps before surges are told apart
RECENT_LIMIT_MOVES = 100  # limit moves the planner keeps, all pools together
SETTLED_QUERY_POINTS = 1_000  # history samples read for the limit at a surge's end (the newest kept)


@dataclass(frozen=True, slots=True)
class OperationPlanning:
    """How the planner manages one operation (``[planning.operations.<name>]``).

    Attributes:
        predictive: Size the operation's batches ahead of its load score's forecast: from
            the forecast peak within ``lead_s`` when that is above the measured load.
        lead_s: How far ahead the operation looks, seconds; 0 means the duration of its
            recent batches (a batch started now runs that long; ``step_s`` until one is
            reported). At most planning.horizon_s.
        forecast_bound: Which forecast of each point to size from: ``value`` (the point
            forecast, when the interval's lower bound is above the measured load) or
            ``upper`` (the interval's upper bound, when the point forecast is: smaller
            batches sooner).
    """

    predictive: bool = False
    lead_s: float = 0.0
    forecast_bound: str = "value"

    def lead(self, horizon_s: float) -> float:
        """The lead time in force, seconds (0: the operation's recent batch duration)."""
        return min(horizon_s, self.lead_s)


def outlook(
    result: Forecast | None, planning: OperationPlanning, lead_s: float, origin: float, step_s: float
) -> LoadOutlook | None:
    """The load-score forecast ``result`` as an operation's outlook, its points at ``origin``
    (monotonic seconds: the forecast's origin) plus their offsets, each speaking for the
    ``step_s`` before it; None without a model."""
    if result is None or result.model is None or not result.points:
        return None
    upper = planning.forecast_bound == "upper"
    values = tuple(p.upper if upper else p.value for p in result.points)
    lows = tuple(p.value if upper else p.lower for p in result.points)
    try:
        times = tuple(origin + p.offset_s for p in result.points)
        return LoadOutlook(times, values, lead_s, lows=lows, step_s=step_s)
    except ValueError as exc:  # a forecast is finite and rising by construction; never trust that blindly
        log.warning("capacity planning: a load-score forecast was unusable: %s", exc)
        return None


@dataclass(frozen=True, slots=True)
class Surges:
    """What a pool's demand history says about surges (see the module docstring).

    Attributes:
        threshold: Requests per second above which a step is part of a surge.
        median: The median of the known steps, requests per second.
        surging: The newest known step is above the threshold.
        last_end: Index of the final step of the last surge that is over; None when none is.
        last_peak: The highest demand of that surge, requests per second; 0 when none.
    """

    threshold: float
    median: float
    surging: bool
    last_end: int | None
    last_peak: float


def surges(values: Sequence[float | None], mads: float) -> Surges | None:
    """Surges in ``values`` (requests per second per step, oldest first, None for a gap);
    None with fewer than ``MIN_SURGE_STEPS`` known steps."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    if len(known) < MIN_SURGE_STEPS:
        return None
    median = statistics.median(known)
    spread = MAD_TO_SIGMA * statistics.median(abs(v - median) for v in known)
    threshold = median + max(mads * spread, SURGE_MIN_RISE * median)
    surging: bool | None = None
    below_seen = False
    end: int | None = None
    for i in range(len(values) - 1, -1, -1):  # newest first: the last step above with a known one below after it
        v = values[i]
        if v is None or not math.isfinite(v):
            continue
        above = v > threshold
        if surging is None:
            surging = above
        if not above:
            below_seen = True
        elif below_seen:
            end = i
            break
    peak = 0.0
    if end is not None:
        i = end
        while i >= 0 and (v := values[i]) is not None and math.isfinite(v) and v > threshold:
            peak = max(peak, v)
            i -= 1
    return Surges(threshold, median, bool(surging), end, peak)


@dataclass(frozen=True, slots=True)
class SurgeView:
    """A pool's surges with the limit the last one settled at (read from the history).

    Attributes:
        surges: The analysis of the pool's demand.
        settled: The limit recorded last in the final step of the last surge; None when
            no surge is over or the history has no limit for it.
        ended_at: Wall seconds the last surge's final step ended; None when none is over.
    """

    surges: Surges
    settled: int | None
    ended_at: float | None


def surge_view(
    history: History, pool: str, demand: Sequence[float | None], mads: float, until: float, step_s: float
) -> SurgeView | None:
    """The surges of ``demand`` (the pool's requests per second: steps of ``step_s`` ending at
    ``until``, wall seconds) and the limit the last one settled at. Blocking (SQLite)."""
    found = surges(demand, mads)
    if found is None:
        return None
    if found.last_end is None:
        return SurgeView(found, None, None)
    ended = until - (len(demand) - 1 - found.last_end) * step_s
    return SurgeView(found, settled_limit(history, pool, max(0.0, ended - step_s), ended), ended)


def settled_limit(history: History, pool: str, since: float, until: float) -> int | None:
    """The concurrency limit the history recorded last for ``pool`` in ``[since, until]``
    (wall seconds); None when it recorded none, or only 0 (unlimited)."""
    try:
        answer: dict[str, Any] = history.query(since, until, pool=pool, limit=SETTLED_QUERY_POINTS)
    except ValueError:
        return None
    recorded = answer.get("pools", {}).get(pool, {}).get("concurrency_limit", ())
    for value in reversed(recorded):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return None


@dataclass(frozen=True, slots=True)
class LimitMove:
    """One predictive move of a pool's limit. ``at_wall`` is Unix seconds."""

    pool: str
    at_wall: float
    previous: int
    new: int
    reason: str


@dataclass(slots=True)
class _Watch:
    """A predictive-limit pool's state: no move before ``rearm_at`` (monotonic), moves made."""

    rearm_at: float = -math.inf
    moves_total: int = 0


class PredictiveLimits:
    """Moves the adaptive limits of predictive-limit pools ahead of forecast surges.

    Keeps per pool only what one move needs (when it may move again, and a count) for the
    pools it is asked about; ``forget`` drops the others.
    """

    def __init__(self) -> None:
        self._watch: dict[str, _Watch] = {}
        self.events: deque[LimitMove] = deque(maxlen=RECENT_LIMIT_MOVES)

    def moves_total(self) -> dict[str, int]:
        """Moves made per pool asked about (0 until its first), for the metrics."""
        return {pool: watch.moves_total for pool, watch in list(self._watch.items())}

    def forget(self, keep: Collection[str]) -> None:
        """Drops the state of every pool not in ``keep``."""
        for pool in [p for p in self._watch if p not in keep]:
            del self._watch[pool]

    def consider(
        self,
        pool: str,
        slots: SlotPool,
        view: SurgeView | None,
        demand: Forecast | None,
        lead_s: float,
        *,
        mono: float,
        wall: float,
    ) -> LimitMove | None:
        """Moves ``slots``' limit when a surge is forecast within ``lead_s`` and the limit is
        below where the last surge settled (see the module docstring); the move, or None."""
        watch = self._watch.setdefault(pool, _Watch())
        limit = slots.limit
        if not limit.adaptive or slots.shared_limit is not None or mono < watch.rearm_at:
            return None
        if view is None or view.settled is None or view.ended_at is None or view.surges.surging:
            return None
        if demand is None or demand.model is None:
            return None
        threshold = view.surges.threshold
        start = next((p for p in demand.points if p.offset_s <= lead_s and p.value > threshold), None)
        previous = limit.limit
        if start is None or previous >= view.settled:
            return None
        limit.start_from(view.settled)
        new = limit.limit
        if new <= previous:  # the algorithm's max_limit is below the settled level
            return None
        watch.rearm_at = mono + start.offset_s + lead_s
        watch.moves_total += 1
        capped = "" if new == view.settled else f" (capped at its max_limit {new})"
        reason = (
            f"forecast {start.value:.1f} requests/s in {start.offset_s:.0f} s > surge threshold "
            f"{threshold:.1f} (median {view.surges.median:.1f}): limit {previous} -> {new}, where the last "
            f"surge (peak {view.surges.last_peak:.1f} requests/s, over {wall - view.ended_at:.0f} s ago) "
            f"settled at {view.settled}{capped}"
        )
        move = LimitMove(pool, wall, previous, new, reason)
        self.events.append(move)
        log.info("pool %s: predictive limit %d -> %d (%s)", pool, previous, new, reason)
        return move
