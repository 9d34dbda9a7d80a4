"""The capacity planner's plans as the contract carries them (planning.proto)."""

from __future__ import annotations

from collections.abc import Mapping

from loadwarden.policy.forecast import Forecast
from loadwarden.v1 import decision_pb2 as _pb
from loadwarden.v1 import planning_pb2 as _planning

from ..engine._planner import OperationPlan, Plans, PoolPlan, cut
from ._convert import timestamp

SERIES = {
    "requests_per_s": _planning.FORECAST_SERIES_REQUESTS_PER_S,
    "in_flight": _planning.FORECAST_SERIES_IN_FLIGHT,
    "cpu": _planning.FORECAST_SERIES_CPU,
    "latency_ms": _planning.FORECAST_SERIES_LATENCY_MS,
    "batch_requests_per_s": _planning.FORECAST_SERIES_BATCH_REQUESTS_PER_S,
    "load_score": _planning.FORECAST_SERIES_LOAD_SCORE,
}
METRICS = {
    "cpu": _planning.SCALING_METRIC_CPU,
    "in_flight": _planning.SCALING_METRIC_IN_FLIGHT,
    "requests_per_s": _planning.SCALING_METRIC_REQUESTS_PER_S,
}


def recommendations_response(plans: Plans, interval_s: float) -> _pb.GetRecommendationsResponse:
    return _pb.GetRecommendationsResponse(
        recommendations=[recommendation(p, plans.horizon_s, plans.coverage) for p in plans.pools],
        operations=[operation(p, plans.horizon_s, plans.coverage) for p in plans.operations],
        interval_s=interval_s,
    )


def recommendation(plan: PoolPlan, horizon_s: float, coverage: float) -> _planning.Recommendation:
    rec = plan.recommendation
    out = _planning.Recommendation(
        pool=plan.pool,
        desired_servers=rec.desired,
        reactive_servers=rec.reactive,
        current_servers=rec.current,
        metric=METRICS[plan.scaling.metric],
        target=plan.scaling.target,
        lead_time_s=rec.lead_time_s,
        reason=rec.reason,
        predictive=plan.scaling.predictive,
        forecasts=forecasts(plan.forecasts, plan.origin, horizon_s, coverage),
        computed_at=timestamp(plan.computed_at),
    )
    if rec.predictive is not None:
        out.predictive_servers = rec.predictive
    if rec.metric is not None:
        out.metric_value = rec.metric
    if rec.forecast_peak is not None:
        out.forecast_peak = rec.forecast_peak
    return out


def operation(plan: OperationPlan, horizon_s: float, coverage: float) -> _planning.OperationForecasts:
    return _planning.OperationForecasts(
        operation=plan.operation,
        forecasts=forecasts(plan.forecasts, plan.origin, horizon_s, coverage),
        computed_at=timestamp(plan.computed_at),
    )


def forecasts(
    by_series: Mapping[str, Forecast], origin: float, horizon_s: float, coverage: float
) -> list[_planning.Forecast]:
    return [forecast(name, result, origin, horizon_s, coverage) for name, result in by_series.items()]


def forecast(name: str, result: Forecast, origin: float, horizon_s: float, coverage: float) -> _planning.Forecast:
    return _planning.Forecast(
        series=SERIES[name],
        model=result.model or "",
        reason=result.reason,
        history_points=result.history_points,
        coverage=coverage,
        points=[
            _planning.ForecastPoint(at=timestamp(origin + p.offset_s), value=p.value, lower=p.lower, upper=p.upper)
            for p in cut(result, horizon_s)
        ],
        scores=[
            _planning.ModelScore(model=s.model, mape=s.mape, coverage=s.coverage, origins=s.origins)
            for s in result.scores
        ],
    )
