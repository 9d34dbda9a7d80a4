"""Capacity planning: each pool's load forecast from the history store, and how many
servers it needs (``[planning]``; issue 21).

Every ``interval_s`` the planner reads ``history_s`` of history, turns each pool's
and operation's samples into series at ``step_s`` (``_planning_series``), forecasts
them in a worker process (the models are pure Python and would hold the GIL, so
decisions would wait for them in a thread), then asks each pool's ``Scaler`` (the
kernel's HPA rule with its stabilisation windows, and the predictive variant) for a
recommendation, on the event loop. ``GetRecommendations``, the admin port's JSON,
the metrics and the dashboard all read the last result.

The metric a pool scales on is the newest step's value of its series divided by the
servers it has now: CPU (reported, in servers), requests in flight, or requests per
second. The predictive rule gets the forecast of that same series, so both rules
speak the same unit.

The lead time (how long a new server takes to become ready) is learned from what
the planner sees: when it first recommends more servers than a pool has, it notes
the time; each server that joins afterwards, while the pool is still short, counts
the time since then plus the pool's slow-start window. Until one is seen, the
configured ``lead_time_s`` is used. The planner sees a join at its own interval, so
a learned lead time is rounded up to it.

After each refresh the forecasts also move what is opted in ahead of the load
(``_predictive``): predictive operations' batch sizes, from their load score's
forecast, and predictive-limit pools' adaptive limits, to where the last surge settled
when the next one is forecast.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loadwarden.policy import Clock, InvalidArgument, NotFound, check_name
from loadwarden.policy.forecast import Forecast, ForecastSettings, forecast
from loadwarden.policy.scaling import LeadTimes, Recommendation, Scaler, ScalingSettings

from ._core import DecisionCore
from ._planning_series import OPERATION_SERIES, POOL_SERIES, bucket, forecast_all, latest
from ._predictive import LimitMove, OperationPlanning, PredictiveLimits, SurgeView, outlook, surge_view

if TYPE_CHECKING:
    from loadwarden.observability.history import History

log = logging.getLogger("loadwarden.server")

# The per-server metric a pool scales on -> the pool series it is read from.
METRICS: Mapping[str, str] = {"cpu": "cpu", "in_flight": "in_flight", "requests_per_s": "requests_per_s"}
# Which forecast of a peak (ScalingSettings.forecast_bound, OperationPlanning.forecast_bound).
FORECAST_BOUNDS = ("value", "upper")
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
MAX_PLANNED_POOLS = 1_000  # names one GetRecommendations may list, and pools planned at most


@dataclass(frozen=True, slots=True)
class PoolScaling:
    """How one pool is scaled (``[planning.pools.<name>]``; pools without one take the defaults).

    Attributes:
        metric: What the pool scales on, per server: ``cpu`` (reported CPU, a fraction of one
            server), ``in_flight`` (requests in flight) or ``requests_per_s``.
        target: The per-server target of ``metric``, in its unit (0.7 is 70 % CPU).
        tolerance: No change while the metric is within this fraction of the target (HPA's 0.1).
        scale_up_window_s: Stabilisation window for scaling up, seconds: the lowest
            recommendation of the window is taken (HPA's default 0).
        scale_down_window_s: Stabilisation window for scaling down, seconds: the highest
            recommendation of the window is taken (HPA's default 300).
        min_servers: Fewest servers recommended.
        max_servers: Most servers recommended.
        lead_time_s: Time a new server needs to become ready, seconds, until one is learned;
            at most planning.horizon_s.
        predictive: Also provision for the forecast peak within the lead time.
        forecast_bound: Which forecast of that peak: ``value`` (the point forecast) or
            ``upper`` (the prediction interval's upper bound: fewer under-provisioned
            minutes for more server-hours).
        predictive_limit: Move the pool's adaptive limit (aimd, gradient2) ahead of a
            forecast surge of its requests per second, up to where the last surge settled.
        limit_lead_s: How far ahead a surge is looked for, seconds; 0 means step_s plus
            planning.interval_s (so that a refresh sees it before it starts). At most
            planning.horizon_s.
        surge_mads: A step is part of a surge above the median plus this many robust
            standard deviations (1.4826 x MAD) of the pool's requests per second, and at
            least 20 % above the median.
    """

    metric: str = "cpu"
    target: float = 0.7
    tolerance: float = 0.1
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0
    min_servers: int = 1
    max_servers: int = 1_000
    lead_time_s: float = 300.0
    predictive: bool = False
    forecast_bound: str = "value"
    predictive_limit: bool = False
    limit_lead_s: float = 0.0
    surge_mads: float = 3.0

    def limit_lead(self, step_s: float, interval_s: float, horizon_s: float) -> float:
        """The limit's lead time in force, seconds."""
        return min(horizon_s, self.limit_lead_s or step_s + interval_s)

    def settings(self) -> ScalingSettings:
        return ScalingSettings(
            target=self.target,
            tolerance=self.tolerance,
            scale_up_window_s=self.scale_up_window_s,
            scale_down_window_s=self.scale_down_window_s,
            min_servers=self.min_servers,
            max_servers=self.max_servers,
            lead_time_s=self.lead_time_s,
            predictive=self.predictive,
            forecast_bound=self.forecast_bound,
        )


@dataclass(frozen=True, slots=True)
class PlanningSettings:
    """The ``[planning]`` section: forecasts and scaling recommendations (off by default).

    Attributes:
        enabled: Run the planner. It reads the load history, kept in memory unless
            ``admin.history_path`` is set, sampled every ``admin.history_interval_ms``.
        interval_s: How often forecasts and recommendations are recomputed, seconds.
        step_s: Spacing of the forecast series, seconds; divides a day evenly.
        horizon_s: How far ahead forecasts go, seconds, at least ``step_s``.
        history_s: How much history the forecasts read, seconds; at most
            ``admin.history_retention_s``. Weekly seasonality needs two weeks of it.
        coverage: Nominal share of the prediction intervals, 0.5-0.99.
        seasons_s: The seasonal periods models try, seconds, each a whole multiple of
            ``step_s`` (a day and a week by default; a compressed test cycle may be shorter);
            empty tries only the models without a season.
        pools: Per-pool scaling, by pool name; other pools scale on CPU at 70 %.
        operations: Per-operation planning, by operation name; other operations are
            sized from their measured load alone.
    """

    enabled: bool = False
    interval_s: float = 60.0
    step_s: float = 60.0
    horizon_s: float = 3_600.0
    history_s: float = DAY_S
    coverage: float = 0.8
    seasons_s: tuple[float, ...] = (DAY_S, WEEK_S)
    pools: Mapping[str, PoolScaling] = field(default_factory=dict)
    operations: Mapping[str, OperationPlanning] = field(default_factory=dict)

    def scaling(self, pool: str) -> PoolScaling:
        return self.pools.get(pool) or _DEFAULT_SCALING

    def operation(self, name: str) -> OperationPlanning:
        return self.operations.get(name) or _DEFAULT_OPERATION

    def forecast_settings(self) -> ForecastSettings:
        return ForecastSettings(
            step_s=self.step_s, horizon_s=self.horizon_s, coverage=self.coverage, seasons_s=self.seasons_s
        )


_DEFAULT_SCALING = PoolScaling()
_DEFAULT_OPERATION = OperationPlanning()


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """One pool's last recommendation and forecasts (wall times, seconds since the epoch)."""

    pool: str
    scaling: PoolScaling
    recommendation: Recommendation
    forecasts: Mapping[str, Forecast]
    origin: float  # the end of the last history step: forecast offsets count from here
    computed_at: float


@dataclass(frozen=True, slots=True)
class OperationPlan:
    operation: str
    forecasts: Mapping[str, Forecast]
    origin: float
    computed_at: float


@dataclass(frozen=True, slots=True)
class Plans:
    """What GetRecommendations answers."""

    pools: tuple[PoolPlan, ...]
    operations: tuple[OperationPlan, ...]
    horizon_s: float
    coverage: float  # nominal share of the prediction intervals


@dataclass(slots=True)
class _ScaleUp:
    """A pool short of servers: since when, and how many it had then."""

    since: float
    servers: int


class Planner:
    """Recomputes every pool's plan every ``settings.interval_s`` (see the module docstring).

    Args:
        core: The decision core whose pools are planned.
        settings: The ``[planning]`` section.
        history: The load history the forecasts read.
        clock: Monotonic time for the stabilisation windows.
        wall: Wall time, seconds since the epoch: the history's clock; ``clock.wall`` by default.
        executor_factory: Makes the executor forecasts run in (made at the first refresh, and
            again when a worker died: a broken process pool stays broken); None runs them
            in a worker thread.
    """

    def __init__(
        self,
        core: DecisionCore,
        settings: PlanningSettings,
        history: History,
        *,
        clock: Clock,
        wall: Callable[[], float] | None = None,
        executor_factory: Callable[[], Executor] | None = None,
    ) -> None:
        self.core = core
        self.settings = settings
        self.history = history
        self.clock = clock
        self._wall = wall or clock.wall
        self._executor_factory = executor_factory
        self._executor: Executor | None = None
        self._scalers: dict[str, tuple[PoolScaling, Scaler]] = {}
        self._short: dict[str, _ScaleUp] = {}
        self.plans: dict[str, PoolPlan] = {}
        self.operation_plans: dict[str, OperationPlan] = {}
        self.refreshes = 0
        self.predictive = PredictiveLimits()
        # One refresh at a time: two overlapping ones (the loop's and one asked for) could
        # otherwise finish out of order, the older read of the history overwriting the newer.
        self._refreshing = asyncio.Lock()

    @property
    def limit_moves(self) -> Sequence[LimitMove]:
        """The latest predictive limit moves, oldest first (at most 100, all pools together)."""
        return tuple(self.predictive.events)

    async def run(self) -> None:
        """Refreshes every interval until cancelled; a failed refresh is logged, the next tries again."""
        while True:
            started = self.clock.monotonic()
            try:
                await self.refresh()
            except Exception:  # the planner must outlive a bad refresh
                log.exception("capacity planning: refresh failed")
            took = self.clock.monotonic() - started
            if took > self.settings.interval_s:
                log.warning("capacity planning: a refresh took %.1f s, longer than interval_s", took)
            await asyncio.sleep(max(0.0, self.settings.interval_s - took))

    async def refresh(self) -> None:
        """Reads the history, forecasts, and recomputes every pool's recommendation (after the
        refresh under way, if one is)."""
        async with self._refreshing:
            await self._refresh()

    async def _refresh(self) -> None:
        now = self._wall()
        origin = self.core.clock.monotonic()  # ``now`` in the clock operations decide by
        pools = self.core.pools()[:MAX_PLANNED_POOLS]
        operations = sorted(self.core.operations)[:MAX_PLANNED_POOLS]
        series, surges = await asyncio.to_thread(self._series, [p.name for p in pools], operations, now)
        settings = self.settings.forecast_settings()
        flat = {f"{kind}\0{name}\0{s}": v for (kind, name), by in series.items() for s, v in by.items()}
        forecasts = await asyncio.to_thread(self._forecast, flat, settings)
        grouped: dict[tuple[str, str], dict[str, Forecast]] = {}
        for key, result in forecasts.items():
            kind, name, which = key.split("\0")
            grouped.setdefault((kind, name), {})[which] = result
        plans: dict[str, PoolPlan] = {}
        for pool in pools:
            if self.core.find_pool(pool.name) is not pool:
                continue  # deleted (or made again) while the forecasts ran
            by_series = grouped.get(("pool", pool.name), {})
            rec, scaling = self._recommend(pool.name, len(pool.servers), pool.settings.slow_start_ms, series, by_series)
            plans[pool.name] = PoolPlan(pool.name, scaling, rec, by_series, now, now)
        self.plans = plans
        for gone in set(self._scalers) - set(plans):
            self._scalers.pop(gone, None)
            self._short.pop(gone, None)
        self.operation_plans = {
            name: OperationPlan(name, grouped.get(("operation", name), {}), now, now)
            for name in operations
            if name in self.core.operations
        }
        # What moves ahead of the load must never cost the plans, nor one kind the other.
        try:
            self._look_ahead(grouped, origin)
        except Exception:
            log.exception("capacity planning: predictive batch sizes failed in this refresh")
        try:
            self._move_limits(plans, surges)
        except Exception:
            log.exception("capacity planning: predictive limits failed in this refresh")
        rows = [
            (
                p.pool,
                p.recommendation.current,
                p.recommendation.desired,
                p.recommendation.reactive,
                p.recommendation.predictive,
            )
            for p in plans.values()
        ]
        await asyncio.to_thread(self.history.record_plan, now, rows)
        self.refreshes += 1

    def _forecast(
        self, series: Mapping[str, Sequence[float | None]], settings: ForecastSettings
    ) -> dict[str, Forecast]:
        """Every series' forecast, in the executor when there is one (from a worker thread)."""
        if self._executor_factory is None:
            return forecast_all(series, settings)
        if self._executor is None:
            self._executor = self._executor_factory()
        try:
            # The kernel's own function goes to the worker, so it imports loadwarden.policy alone.
            results = self._executor.map(forecast, series.values(), itertools.repeat(settings), chunksize=8)
            return dict(zip(series, results, strict=True))
        except BrokenExecutor:
            log.warning("capacity planning: the forecast worker died; starting another for the next refresh")
            broken, self._executor = self._executor, None
            broken.shutdown(wait=False, cancel_futures=True)
            raise

    def close(self) -> None:
        """Stops the forecast worker, if one runs."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _series(
        self, pools: Sequence[str], operations: Sequence[str], now: float
    ) -> tuple[dict[tuple[str, str], dict[str, list[float | None]]], dict[str, SurgeView]]:
        """Every pool's and operation's series, from the history, and the surges of each
        predictive-limit pool (in a worker thread)."""
        step, since = self.settings.step_s, max(0.0, now - self.settings.history_s)
        out: dict[tuple[str, str], dict[str, list[float | None]]] = {}
        surges: dict[str, SurgeView] = {}
        for name in pools:
            rows = self.history.pool_rows(name, since, now)
            by = out[("pool", name)] = {
                s: bucket(rows, col, counter, since, now, step) for s, (col, counter) in POOL_SERIES.items()
            }
            scaling = self.settings.scaling(name)
            if scaling.predictive_limit:
                try:
                    view = surge_view(self.history, name, by["requests_per_s"], scaling.surge_mads, now, step)
                except Exception:  # a history that cannot be read moves no limit
                    log.warning("capacity planning: pool %s: surges not read from the history", name, exc_info=True)
                    view = None
                if view is not None:
                    surges[name] = view
        for name in operations:
            rows = self.history.operation_rows(name, since, now)
            out[("operation", name)] = {
                s: bucket(rows, col, counter, since, now, step) for s, (col, counter) in OPERATION_SERIES.items()
            }
        return out, surges

    def _look_ahead(self, grouped: Mapping[tuple[str, str], Mapping[str, Forecast]], origin: float) -> None:
        """Gives each predictive operation the outlook of its load score's forecast, at
        ``origin`` (monotonic: the forecasts' origin); None without a model."""
        step, horizon = self.settings.step_s, self.settings.horizon_s
        for name, operation in list(self.core.operations.items()):
            planning = self.settings.operation(name)
            if not planning.predictive:
                if operation.outlook is not None:
                    operation.look_ahead(None)
                continue
            result = grouped.get(("operation", name), {}).get("load_score")
            operation.look_ahead(outlook(result, planning, planning.lead(horizon), origin, step))

    def _move_limits(self, plans: Mapping[str, PoolPlan], surges: Mapping[str, SurgeView]) -> None:
        """Moves predictive-limit pools' limits ahead of forecast surges; waiters get the room."""
        s = self.settings
        watched = []
        for name, plan in plans.items():
            pool = self.core.find_pool(name)
            if not plan.scaling.predictive_limit or pool is None:
                continue
            watched.append(name)
            lead = plan.scaling.limit_lead(s.step_s, s.interval_s, s.horizon_s)
            demand = plan.forecasts.get("requests_per_s")
            mono, wall = self.clock.monotonic(), self._wall()
            if self.predictive.consider(name, pool.slots, surges.get(name), demand, lead, mono=mono, wall=wall):
                self.core.admission.dispatch(pool.slots)
        self.predictive.forget(watched)

    def _recommend(
        self,
        name: str,
        current: int,
        slow_start_ms: int,
        series: Mapping[tuple[str, str], Mapping[str, Sequence[float | None]]],
        forecasts: Mapping[str, Forecast],
    ) -> tuple[Recommendation, PoolScaling]:
        scaling = self.settings.scaling(name)
        kept = self._scalers.get(name)
        if kept is None or kept[0] != scaling:  # new, or reconfigured: what was learned stays
            learned = kept[1].lead_times if kept is not None else None
            kept = self._scalers[name] = (scaling, Scaler(scaling.settings(), self.clock, lead_times=learned))
        scaler = kept[1]
        self._learn_lead_time(name, current, slow_start_ms, scaler.lead_times)
        values = series.get(("pool", name), {}).get(METRICS[scaling.metric], ())
        total = latest(values[-1:])
        metric = total / current if total is not None and current > 0 else (total if current == 0 else None)
        rec = scaler.recommend(current=current, metric=metric, forecast=forecasts.get(METRICS[scaling.metric]))
        if rec.desired > current and name not in self._short:
            self._short[name] = _ScaleUp(self.clock.monotonic(), current)
        return rec, scaling

    def _learn_lead_time(self, name: str, current: int, slow_start_ms: int, lead_times: LeadTimes) -> None:
        short = self._short.get(name)
        if short is None:
            return
        plan = self.plans.get(name)
        if current > short.servers:
            waited = self.clock.monotonic() - short.since + slow_start_ms / 1000.0
            for _ in range(current - short.servers):
                lead_times.observe(waited)
            short.servers = current
        if plan is None or current >= plan.recommendation.desired or current < short.servers:
            self._short.pop(name, None)

    def answer(self, pools: Sequence[str], horizon_s: float, include_operations: bool) -> Plans:
        """The plans of ``pools`` (every pool when empty), forecasts cut at ``horizon_s`` (0: all).

        Raises:
            InvalidArgument: too many names, or a horizon past planning.horizon_s.
            NotFound: an unknown pool (the first one).
        """
        if len(pools) > MAX_PLANNED_POOLS:
            raise InvalidArgument("pools", f"names {len(pools)} pools; at most {MAX_PLANNED_POOLS} in one request")
        for i, name in enumerate(pools):
            check_name(name, f"pools[{i}]")
        if not (math.isfinite(horizon_s) and 0 <= horizon_s <= self.settings.horizon_s):
            raise InvalidArgument(
                "horizon_s", f"must be 0 (planning.horizon_s) to {self.settings.horizon_s:g} seconds, got {horizon_s:g}"
            )
        horizon = horizon_s or self.settings.horizon_s
        for i, name in enumerate(pools):
            if self.core.find_pool(name) is None:
                raise NotFound(f"pools[{i}]", f"no pool named {name!r}")
        names = sorted(set(pools)) if pools else sorted(self.plans)
        chosen = tuple(self.plans[n] for n in names if n in self.plans)
        ops = tuple(self.operation_plans[n] for n in sorted(self.operation_plans)) if include_operations else ()
        return Plans(chosen, ops, horizon, self.settings.coverage)


def cut(result: Forecast, horizon_s: float) -> tuple[Any, ...]:
    """The forecast's points up to ``horizon_s`` ahead."""
    return tuple(p for p in result.points if p.offset_s <= horizon_s + 1e-9)
