"""Configuration records read back to the same settings (what a restart or another replica sees)."""

from __future__ import annotations

from typing import Any

import pytest

from loadwarden.policy import parse_operation, parse_pool
from loadwarden.server.app._catalog import digest, operation_record, pool_record, settings_record

POOLS: list[dict[str, Any]] = [
    {},
    {"strategy": "least_connections", "max_concurrency": 7, "max_queue_length": 20, "max_wait_ms": 900},
    {"strategy": "p2c", "strategy_params": {"choice_count": 3}, "slow_start_ms": 5_000},
    {"strategy": "q_learning", "strategy_params": {"epsilon": 0.2, "alpha": 0.3}},
    {"lease_ttl_ms": 5_000, "max_lease_ttl_ms": 60_000, "limit_algorithm": "aimd", "max_concurrency": 20},
    {"rate_limit": "30/minute", "rate_burst": 5, "identity_rate_limit": "100/hour", "identity_rate_burst": 9},
    {"rate_limit": "2/second", "rate_limit_keys": 50, "rate_limit_keys_per_identity": 7},
    {"outlier_detection": {"consecutive_failures": 3, "base_ejection_time_ms": 1_000, "disabled": True}},
    {"require_load_report": True, "load_report_ttl_ms": 2_000},
]


@pytest.mark.parametrize("values", POOLS)
def test_a_pool_record_parses_back_to_the_same_settings(values: dict[str, Any]) -> None:
    settings, _ = parse_pool("p", "pool", values, "pools.p", 100)
    again, _ = parse_pool("p", "pool", settings_record(settings), "stored", 100)
    assert again == settings


def test_an_operation_record_parses_back_to_the_same_settings() -> None:
    for values in (
        {},
        {"min_batch_size": 2, "max_batch_size": 64, "default_batch_size": 8, "cooldown_ms": 500},
        {"mode": "latency_target", "target_latency_ms": 40.0, "additive_step": 2, "backoff_ratio": 0.5},
        {"load_source": "pool", "pool": "api", "low_threshold_percent": 30.0, "high_threshold_percent": 70.0},
    ):
        settings = parse_operation("op", "operation", values, "operations.op")
        assert parse_operation("op", "operation", operation_record(settings), "stored") == settings


def test_the_digest_follows_the_definition_only() -> None:
    settings, servers = parse_pool("p", "pool", {"servers": [{"id": "a", "address": "h:1"}]}, "pools.p", 100)
    first = pool_record(settings, servers or ())
    assert digest(first) == digest(pool_record(settings, servers or ()))
    other, _ = parse_pool("p", "pool", {"max_concurrency": 3}, "pools.p", 100)
    assert digest(pool_record(other, servers or ())) != digest(first)
    assert pool_record(settings, servers or (), ["a"])["drained"] == ["a"]
