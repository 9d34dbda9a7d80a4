"""The [planning] section: defaults, per-pool tables, and every bad value named by its key."""

from __future__ import annotations

from typing import Any

import pytest

from loadwarden.server import ConfigError
from loadwarden.server.app._config import parse_config
from loadwarden.server.engine._planner import PlanningSettings, PoolScaling


def test_planning_is_off_by_default_and_takes_the_hpa_defaults() -> None:
    planning = parse_config({}).planning
    assert planning == PlanningSettings()
    assert not planning.enabled
    assert planning.scaling("any") == PoolScaling(metric="cpu", target=0.7, tolerance=0.1)
    assert planning.scaling("any").scale_down_window_s == 300.0
    assert planning.forecast_settings().seasons_s == (86_400.0, 604_800.0)


def test_a_pool_table_sets_its_own_scaling() -> None:
    planning = parse_config(
        {
            "admin": {"history_retention_s": 30 * 86_400},
            "planning": {
                "enabled": True,
                "step_s": 300,
                "horizon_s": 1_800,
                "history_s": 14 * 86_400,
                "seasons_s": [86_400],
                "pools": {"api": {"metric": "in_flight", "target": 8, "predictive": True, "lead_time_s": 600}},
            },
        }
    ).planning
    assert planning.enabled and planning.step_s == 300.0
    api = planning.scaling("api")
    assert (api.metric, api.target, api.predictive, api.lead_time_s) == ("in_flight", 8.0, True, 600.0)
    assert planning.scaling("other").metric == "cpu"
    assert planning.forecast_settings().seasons_s == (86_400.0,)


@pytest.mark.parametrize(
    ("planning", "key", "problem"),
    [
        ({"step_s": 7}, "planning.step_s", "must divide every season"),
        ({"seasons_s": 3}, "planning.seasons_s", "a list"),
        ({"seasons_s": [0.5]}, "planning.seasons_s", "each period"),
        ({"step_s": 0}, "planning.step_s", "must be"),
        ({"horizon_s": 30}, "planning.horizon_s", "at least step_s"),
        ({"coverage": 1.5}, "planning.coverage", "[0.5, 0.99]"),
        ({"interval_s": "soon"}, "planning.interval_s", "must be"),
        ({"enabled": True, "history_s": 2 * 86_400}, "planning.history_s", "admin.history_retention_s"),
        ({"pools": {"api": {"metric": "memory"}}}, "planning.pools.api.metric", "unknown metric"),
        ({"pools": {"api": {"target": 0}}}, "planning.pools.api.target", "> 0"),
        ({"pools": {"api": {"tolerance": 1}}}, "planning.pools.api.tolerance", "must be"),
        ({"pools": {"api": {"min_servers": 5, "max_servers": 2}}}, "planning.pools.api.max_servers", "min_servers"),
        ({"pools": {"api": {"lead_time_s": 7_200}}}, "planning.pools.api.lead_time_s", "planning.horizon_s"),
        ({"pools": {"api": {"predictive": "yes"}}}, "planning.pools.api.predictive", "true or false"),
        ({"pools": {"api": {"window": 3}}}, "planning.pools.api.window", "unknown key"),
        ({"pools": {"bad name!": {}}}, "planning.pools.bad name!", "a pool name"),
        ({"pools": {"api": 3}}, "planning.pools.api", ""),
        ({"forecast": True}, "planning.forecast", "unknown key"),
    ],
)
def test_bad_planning_values_name_the_key(planning: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"planning": planning})
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


def test_more_pool_tables_than_pools_may_exist_are_refused() -> None:
    tables: dict[str, dict[str, Any]] = {f"p{i}": {} for i in range(3)}
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": {"max_pools": 2}, "planning": {"pools": tables}})
    assert err.value.key == "planning.pools"


@pytest.mark.parametrize(
    ("orca", "key", "problem"),
    [
        ({"report_interval_ms": 50}, "pools.api.orca.report_interval_ms", "100"),
        ({"report_interval_ms": 20_000}, "pools.api.orca.report_interval_ms", "load_report_ttl_ms"),
        ({"max_backoff_ms": 10, "initial_backoff_ms": 500}, "pools.api.orca.max_backoff_ms", "initial_backoff_ms"),
        ({"interval": 1}, "pools.api.orca.interval", "unknown key"),
        (3, "pools.api.orca", "a table"),
    ],
)
def test_bad_orca_tables_name_the_key(orca: Any, key: str, problem: str) -> None:
    pool = {"servers": [{"id": "s1", "address": "127.0.0.1:9001"}], "orca": orca}
    with pytest.raises(ConfigError) as err:
        parse_config({"pools": {"api": pool}})
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


def test_an_orca_table_is_taken_and_needs_listed_servers() -> None:
    (spec,) = parse_config({"pools": {"api": {"servers": [{"id": "s1", "address": "h:1"}], "orca": {}}}}).pools
    assert spec.orca is not None and spec.orca.report_interval_ms == 1_000
    with pytest.raises(ConfigError) as err:
        parse_config({"pools": {"api": {"orca": {}}}})
    assert err.value.key == "pools.api.orca"
