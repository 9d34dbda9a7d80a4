"""The admin types and their messages: plain values in, the contract's messages out, bad input named."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format

from loadwarden.sdk import BatchMode, LoadSource, OperationConfig, OutlierDetection, PoolConfig, ServerSpec
from loadwarden.sdk._admin_convert import (
    ADMIN_METHODS,
    configure_operation_request,
    configure_pool_request,
    drain_server_request,
    register_server_request,
)
from loadwarden.sdk._convert import load_status_from_proto
from loadwarden.v1 import admin_pb2 as _admin
from loadwarden.v1 import common_pb2 as _common


def test_admin_methods_are_the_contracts() -> None:
    assert {
        "ConfigurePool",
        "DeletePool",
        "RegisterServer",
        "DeregisterServer",
        "DrainServer",
        "ConfigureOperation",
        "DeleteOperation",
    } == ADMIN_METHODS


def test_pool_config_becomes_the_contracts_message() -> None:
    config = PoolConfig(
        "api",
        strategy="q_learning",
        strategy_params={"epsilon": 0.2, "bins": [1, 2], "nested": {"on": True, "none": None}},
        limit_algorithm="aimd",
        limit_params={"backoff_ratio": 0.9},
        servers=(ServerSpec("s1", "10.0.0.1:80", weight=3),),
        max_concurrency=8,
        max_wait_ms=2_000,
        rate_limit="30/minute",
        outlier_detection=OutlierDetection(consecutive_failures=4, disabled=True),
        slow_start_ms=5_000,
    )

    pool = configure_pool_request(config).pool

    assert json_format.MessageToDict(pool.strategy_params) == {
        "epsilon": 0.2,
        "bins": [1.0, 2.0],
        "nested": {"on": True, "none": None},
    }
    assert json_format.MessageToDict(pool.limit_params) == {"backoff_ratio": 0.9}
    assert (pool.name, pool.strategy, pool.limit_algorithm) == ("api", "q_learning", "aimd")
    assert pool.rate_limit == "30/minute"
    assert (pool.max_concurrency, pool.max_wait_ms, pool.slow_start_ms) == (8, 2_000, 5_000)
    assert [(s.id, s.address, s.weight) for s in pool.servers] == [("s1", "10.0.0.1:80", 3)]
    assert (pool.outlier_detection.consecutive_failures, pool.outlier_detection.disabled) == (4, True)


def test_unset_fields_stay_unset_so_the_service_defaults_apply() -> None:
    pool = configure_pool_request(PoolConfig("api")).pool

    assert not pool.HasField("strategy_params")
    assert not pool.HasField("outlier_detection")
    assert pool == _common.PoolConfig(name="api")


def test_params_are_copied_so_later_changes_do_not_leak_in() -> None:
    params: dict[str, Any] = {"epsilon": 0.1}
    config = PoolConfig("api", strategy_params=params)
    params["epsilon"] = 0.9

    assert config.strategy_params == {"epsilon": 0.1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "name must be a non-empty string"),
        ({"name": 7}, "name must be a non-empty string"),
        ({"strategy": None}, "strategy must be a string"),
        ({"max_concurrency": -1}, "max_concurrency must be an integer >= 0"),
        ({"max_wait_ms": 1.5}, "max_wait_ms must be an integer >= 0"),
        ({"lease_ttl_ms": True}, "lease_ttl_ms must be an integer >= 0"),
        ({"rate_burst": 2**32}, "rate_burst must be an integer >= 0"),
        ({"require_load_report": 1}, "require_load_report must be True or False"),
        ({"strategy_params": [("epsilon", 0.1)]}, "strategy_params must be a dict"),
        ({"strategy_params": {"epsilon": math.nan}}, r"strategy_params\['epsilon'\] must be a finite number"),
        ({"limit_params": {"x": {1: 2}}}, r"limit_params\['x'\]: keys must be strings"),
        ({"strategy_params": {"when": datetime.now(UTC)}}, r"strategy_params\['when'\] must hold only numbers"),
        ({"servers": ServerSpec("s1", "a:1")}, "servers must be an iterable of ServerSpec"),
        ({"servers": [("s1", "a:1")]}, r"servers\[0\] must be a ServerSpec"),
        ({"outlier_detection": {"disabled": True}}, "outlier_detection must be an OutlierDetection"),
    ],
)
def test_pool_config_names_a_field_of_the_wrong_kind(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PoolConfig(**{"name": "api", **kwargs})


def test_params_nested_too_deep_are_refused() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]

    with pytest.raises(ValueError, match="nested more than"):
        PoolConfig("api", strategy_params={"deep": deep})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ServerSpec("", "10.0.0.1:80"), "id must be a non-empty string"),
        (lambda: ServerSpec("s1", None), "address must be a non-empty string"),  # type: ignore[arg-type]  # the mistake under test
        (lambda: ServerSpec("s1", "10.0.0.1:80", weight=-2), "weight must be an integer"),
        (lambda: OutlierDetection(max_ejection_percent=-5), "outlier_detection.max_ejection_percent"),
        (lambda: OutlierDetection(disabled="yes"), "outlier_detection.disabled must be True or False"),  # type: ignore[arg-type]  # the mistake under test
        (lambda: OperationConfig("op", 1, "10", 5), "max_batch_size must be an integer"),  # type: ignore[arg-type]  # the mistake under test
        (lambda: OperationConfig("op", 1, 10, 5, backoff_ratio=math.inf), "backoff_ratio must be a finite number"),
        (lambda: OperationConfig("op", 1, 10, 5, low_threshold_percent=-1.0), "low_threshold_percent"),
        (lambda: OperationConfig("op", 1, 10, 5, mode="threshold"), "mode must be a BatchMode"),  # type: ignore[arg-type]  # the mistake under test
        (lambda: OperationConfig("op", 1, 10, 5, load_source="pool"), "load_source must be a LoadSource"),  # type: ignore[arg-type]  # the mistake under test
        (lambda: OperationConfig("", 1, 10, 5), "name must be a non-empty string"),
    ],
)
def test_other_admin_types_name_a_field_of_the_wrong_kind(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_operation_config_becomes_the_contracts_message() -> None:
    config = OperationConfig(
        "import",
        min_batch_size=10,
        max_batch_size=500,
        default_batch_size=100,
        mode=BatchMode.LATENCY_TARGET,
        target_latency_ms=250.0,
        backoff_ratio=0.5,
        load_source=LoadSource.POOL,
        pool="workers",
        cooldown_ms=1_000,
    )

    message = configure_operation_request(config).operation

    assert (message.min_batch_size, message.max_batch_size, message.default_batch_size) == (10, 500, 100)
    assert message.mode == _common.BATCH_MODE_LATENCY_TARGET
    assert message.load_source == _common.LOAD_SOURCE_POOL
    assert (message.target_latency_ms, message.backoff_ratio, message.pool, message.cooldown_ms) == (
        250.0,
        0.5,
        "workers",
        1_000,
    )


def test_requests_refuse_what_is_not_the_sdks_type() -> None:
    with pytest.raises(TypeError, match="pool must be a PoolConfig, got dict"):
        configure_pool_request({"name": "api"})  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(TypeError, match="operation must be an OperationConfig, got str"):
        configure_operation_request("import")  # type: ignore[arg-type]  # the mistake under test


def test_drain_always_names_its_state() -> None:
    drain = drain_server_request("api", "s1", draining=True)
    resume = drain_server_request("api", "s1", draining=False)

    assert drain.state == _admin.DRAIN_STATE_DRAINING
    assert resume.state == _admin.DRAIN_STATE_SERVING  # never UNSPECIFIED, which the service refuses


def test_register_server_names_its_arguments() -> None:
    request = register_server_request("api", "s4", "10.0.0.4:80", 2)

    assert (request.pool, request.server.id, request.server.address, request.server.weight) == (
        "api",
        "s4",
        "10.0.0.4:80",
        2,
    )
    with pytest.raises(ValueError, match="server_id must be a non-empty string"):
        register_server_request("api", "", "10.0.0.4:80", 0)
    with pytest.raises(ValueError, match="pool must be a non-empty string"):
        register_server_request(None, "s4", "10.0.0.4:80", 0)  # type: ignore[arg-type]  # the mistake under test


def test_status_carries_every_field_of_the_contracts_server_and_pool_status() -> None:
    server = _common.ServerStatus(
        id="s1",
        weight=4,
        ejections_total=3,
        effective_weight=1.5,
        consecutive_failures=2,
    )
    server.ejected_until.FromSeconds(1_700_000_000)
    pool = _common.PoolStatus(name="api", servers=[server], panic=True, strategy_stats={"epsilon": 0.05})

    [converted_pool] = load_status_from_proto(_common.LoadStatus(pools=[pool])).pools
    [converted] = converted_pool.servers

    assert (converted.ejections_total, converted.effective_weight, converted.consecutive_failures) == (3, 1.5, 2)
    assert converted.ejected_until == datetime.fromtimestamp(1_700_000_000, UTC)
    assert converted_pool.panic is True
    assert converted_pool.strategy_stats == {"epsilon": 0.05}
    # Every field of the contract's messages has a place in the SDK's types.
    assert {f.name for f in _common.ServerStatus.DESCRIPTOR.fields} <= set(type(converted).__dataclass_fields__)
    assert {f.name for f in _common.PoolStatus.DESCRIPTOR.fields} <= set(type(converted_pool).__dataclass_fields__)


def test_a_server_not_ejected_has_no_ejection_end() -> None:
    [pool] = load_status_from_proto(
        _common.LoadStatus(pools=[_common.PoolStatus(servers=[_common.ServerStatus(id="s1")])])
    ).pools

    assert pool.servers[0].ejected_until is None
