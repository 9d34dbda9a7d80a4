"""A pool's ``health_check`` table in the config file, and how HTTP answers are read."""

from __future__ import annotations

from typing import Any

import pytest

from loadwarden.policy import Answer
from loadwarden.server import ConfigError
from loadwarden.server.app._config import parse_config
from loadwarden.server.engine._health_checks import HealthCheckSettings, _dechunk, classify_http

SERVERS = [{"id": "a", "address": "127.0.0.1:8001"}, {"id": "b", "address": "127.0.0.1:8002"}]


def pool(check: Any, **more: Any) -> dict[str, Any]:
    return {"pools": {"api": {"servers": SERVERS, "health_check": check, **more}}}


def test_a_health_check_table_takes_defaults_and_values() -> None:
    (spec,) = parse_config(pool({"path": "/healthz", "interval_ms": 2_000, "degraded_latency_ms": 250})).pools
    assert spec.health_check == HealthCheckSettings(path="/healthz", interval_ms=2_000, degraded_latency_ms=250)
    assert spec.health_check.rules.degraded_share == 0.25
    grpc = parse_config(pool({"protocol": "grpc", "service": "pkg.Svc"})).pools[0].health_check
    assert grpc is not None and (grpc.protocol, grpc.service) == ("grpc", "pkg.Svc")
    assert parse_config({"pools": {"api": {"servers": SERVERS}}}).pools[0].health_check is None


@pytest.mark.parametrize(
    ("raw", "key", "problem"),
    [
        (
            pool({"protocol": "tcp"}),
            "pools.api.health_check.protocol",
            "unknown protocol 'tcp'; valid protocols: http, grpc",
        ),
        (pool({"path": "health"}), "pools.api.health_check.path", "must be a path starting with '/'"),
        (pool({"path": "/a b"}), "pools.api.health_check.path", "must be printable ASCII without spaces"),
        (pool({"interval_ms": 5}), "pools.api.health_check.interval_ms", "must be an integer in [10, 3600000], got 5"),
        (
            pool({"unhealthy_threshold": 0}),
            "pools.api.health_check.unhealthy_threshold",
            "must be an integer in [1, 1000]",
        ),
        (
            pool({"degraded_weight_percent": 0}),
            "pools.api.health_check.degraded_weight_percent",
            "must be an integer in [1, 100]",
        ),
        (
            pool({"timeout_ms": 2_000}),
            "pools.api.health_check.timeout_ms",
            "must be at most interval_ms (1000), got 2000",
        ),
        (pool({"service": "x"}), "pools.api.health_check.service", 'it needs protocol = "grpc"'),
        (pool({"intervl_ms": 1}), "pools.api.health_check.intervl_ms", "unknown key; valid keys: "),
        (pool("yes"), "pools.api.health_check", "must be a table"),
        ({"pools": {"api": {"health_check": {}}}}, "pools.api.health_check", "checks only the servers listed in"),
        ({"pools": {"api": {"helth_check": {}}}}, "pools.api.helth_check", "health_check"),
    ],
)
def test_bad_health_check_tables_name_the_key(raw: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.key == key and problem in str(err.value)


@pytest.mark.parametrize(
    ("status", "headers", "body", "answer", "problem"),
    [
        (200, {}, b'{"status": "healthy"}', Answer.GOOD, ""),
        (204, {}, b"", Answer.GOOD, ""),
        (200, {}, b"not json {", Answer.GOOD, ""),
        (503, {}, b"", Answer.FAILED, "HTTP 503"),
        (301, {}, b"", Answer.FAILED, "HTTP 301"),
        (200, {}, b'{"status": "Unhealthy"}', Answer.FAILED, "HTTP 200, status 'unhealthy'"),
        (200, {}, b'{"status": "degraded"}', Answer.DEGRADED, "status 'degraded'"),
        (200, {"x-envoy-degraded": ""}, b"", Answer.DEGRADED, "x-envoy-degraded"),
        (503, {}, b'{"status": "degraded"}', Answer.FAILED, "HTTP 503"),
        (200, {}, b'{"status": 3}', Answer.GOOD, ""),
    ],
)
def test_http_answers_are_read_as_envoy_and_seed_002_write_them(
    status: int, headers: dict[str, str], body: bytes, answer: Answer, problem: str
) -> None:
    assert classify_http(status, headers, body) == (answer, problem)


def test_a_chunked_body_is_put_back_together_as_far_as_it_arrived() -> None:
    assert _dechunk(b'5\r\n{"sta\r\n11\r\ntus": "degraded"}\r\n0\r\n\r\n') == b'{"status": "degraded"}'
    assert _dechunk(b"5\r\nab") == b"" and _dechunk(b"zz\r\n") == b""
