"""The pure pieces of predictive load management: surges, outlooks, lead times, config."""

from __future__ import annotations

from typing import Any

import pytest

from loadwarden.policy.forecast import Forecast, Prediction
from loadwarden.server import ConfigError
from loadwarden.server.app._config import parse_config
from loadwarden.server.engine._planner import PoolScaling
from loadwarden.server.engine._predictive import OperationPlanning, outlook, surges

BASE = [20.0] * 12


def test_too_little_history_has_no_surges() -> None:
    assert surges([20.0] * 9 + [None] * 50, 3.0) is None


def test_a_constant_series_has_no_surge_and_a_threshold_a_fifth_above_it() -> None:
    found = surges([20.0] * 30, 3.0)
    assert found is not None
    assert (found.median, found.threshold, found.surging) == (20.0, 24.0, False)
    assert (found.last_end, found.last_peak) == (None, 0.0)


def test_the_last_surge_that_is_over_ends_at_its_last_step_above_the_threshold() -> None:
    values: list[float | None] = [*BASE, 80.0, 90.0, 85.0, 20.0, *BASE, 70.0, 75.0, None, 20.0, 21.0]
    found = surges(values, 3.0)
    assert found is not None and not found.surging
    assert found.last_end == len(BASE) * 2 + 5 and found.last_peak == 75.0  # the second surge, the gap skipped
    ongoing = surges([*values, 90.0, None], 3.0)  # a surge now: the last one over is still the second
    assert ongoing is not None and ongoing.surging and ongoing.last_end == found.last_end


def test_the_threshold_is_robust_to_the_surges_themselves() -> None:
    noisy = [20.0 + (i % 5) for i in range(40)]  # 20-24: median 22, MAD 1
    found = surges([*noisy, 60.0, 60.0, 22.0], 3.0)
    assert found is not None
    assert found.median == 22.0 and found.threshold == pytest.approx(22.0 + max(3 * 1.4826, 4.4))
    assert found.last_end == 41 and found.last_peak == 60.0
    idle = surges([0.0] * 20 + [3.0, 0.0], 3.0)  # an idle pool: any demand is a surge
    assert idle is not None and idle.threshold == 0.0 and idle.last_end == 20


def forecast_of(*values: float, model: str | None = "seasonal_naive/3600") -> Forecast:
    points = tuple(Prediction(60.0 * (i + 1), v, v * 0.5, v * 1.5) for i, v in enumerate(values))
    return Forecast(model, "" if model else "too little history", points if model else (), (), 100)


def test_an_outlook_is_the_forecast_in_the_operations_clock_and_none_without_a_model() -> None:
    ahead = outlook(forecast_of(40.0, 90.0), OperationPlanning(predictive=True), 120.0, 1_000.0, 60.0)
    assert ahead is not None and ahead.times == (1_060.0, 1_120.0) and ahead.scores == (40.0, 90.0)
    assert ahead.lead_s == 120.0 and ahead.step_s == 60.0
    assert ahead.lows == (20.0, 45.0)  # a point counts when its interval's lower bound is above the load
    upper = outlook(forecast_of(40.0, 90.0), OperationPlanning(forecast_bound="upper"), 120.0, 0.0, 60.0)
    assert upper is not None and upper.scores == (60.0, 100.0)  # clamped: a load score is a percentage
    assert upper.lows == (40.0, 90.0)  # sized for the upper bound once the point forecast is above
    assert outlook(forecast_of(40.0, model=None), OperationPlanning(predictive=True), 120.0, 0.0, 60.0) is None
    assert outlook(None, OperationPlanning(predictive=True), 120.0, 0.0, 60.0) is None


def test_lead_times_default_to_the_batch_duration_and_stay_within_the_horizon() -> None:
    assert OperationPlanning().lead(horizon_s=900.0) == 0.0  # the operation's recent batch duration
    assert OperationPlanning(lead_s=300.0).lead(horizon_s=900.0) == 300.0
    assert OperationPlanning(lead_s=3_600.0).lead(horizon_s=900.0) == 900.0
    assert PoolScaling().limit_lead(step_s=60.0, interval_s=30.0, horizon_s=900.0) == 90.0
    assert PoolScaling(limit_lead_s=600.0).limit_lead(step_s=60.0, interval_s=30.0, horizon_s=900.0) == 600.0


def test_planning_tables_set_predictive_operations_and_limits() -> None:
    planning = parse_config(
        {
            "planning": {
                "horizon_s": 900,
                "operations": {"import": {"predictive": True, "lead_s": 240, "forecast_bound": "upper"}},
                "pools": {"api": {"predictive_limit": True, "limit_lead_s": 300, "surge_mads": 2.5}},
            }
        }
    ).planning
    assert planning.operation("import") == OperationPlanning(predictive=True, lead_s=240.0, forecast_bound="upper")
    assert planning.operation("other") == OperationPlanning()
    api = planning.scaling("api")
    assert (api.predictive_limit, api.limit_lead_s, api.surge_mads) == (True, 300.0, 2.5)
    assert not parse_config({}).planning.scaling("api").predictive_limit


@pytest.mark.parametrize(
    ("planning", "key", "problem"),
    [
        ({"operations": {"import": {"predictive": "yes"}}}, "planning.operations.import.predictive", "true or false"),
        ({"operations": {"import": {"lead_s": -1}}}, "planning.operations.import.lead_s", "[0, 604800]"),
        ({"operations": {"import": {"lead_s": 7_200}}}, "planning.operations.import.lead_s", "planning.horizon_s"),
        ({"operations": {"import": {"forecast_bound": "lower"}}}, "planning.operations.import.forecast_bound", "valid"),
        ({"operations": {"import": {"lead": 3}}}, "planning.operations.import.lead", "unknown key"),
        ({"operations": {"bad name!": {}}}, "planning.operations.bad name!", "an operation name"),
        ({"operations": {"import": 3}}, "planning.operations.import", "a table"),
        ({"operations": []}, "planning.operations", "a table"),
        ({"pools": {"api": {"predictive_limit": 1}}}, "planning.pools.api.predictive_limit", "true or false"),
        ({"pools": {"api": {"limit_lead_s": 7_200}}}, "planning.pools.api.limit_lead_s", "planning.horizon_s"),
        ({"pools": {"api": {"limit_lead_s": "soon"}}}, "planning.pools.api.limit_lead_s", "must be"),
        ({"pools": {"api": {"surge_mads": 101}}}, "planning.pools.api.surge_mads", "[0, 100]"),
        ({"pools": {"api": {"surge_mads": -0.5}}}, "planning.pools.api.surge_mads", "[0, 100]"),
    ],
)
def test_bad_predictive_values_name_the_key(planning: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"planning": planning})
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


def test_more_operation_tables_than_operations_may_exist_are_refused() -> None:
    tables: dict[str, dict[str, Any]] = {f"o{i}": {} for i in range(3)}
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": {"max_operations": 2}, "planning": {"operations": tables}})
    assert err.value.key == "planning.operations"
