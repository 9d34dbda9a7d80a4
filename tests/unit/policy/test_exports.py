"""The kernel's public surface is pinned: adding or removing a name is a decision."""

import loadwarden.policy
from loadwarden.policy import batching, forecast, limits, scaling, strategies


def test_public_names() -> None:
    assert sorted(loadwarden.policy.__all__) == [
        "Adjustment",
        "Answer",
        "Backend",
        "BatchAnswer",
        "BatchReportIn",
        "Clock",
        "DEFAULT_LEASE_TTL_MS",
        "DEFAULT_MAX_LEASE_TTL_MS",
        "DecisionError",
        "Health",
        "HostSample",
        "IdGenerator",
        "InvalidArgument",
        "LoadReading",
        "LoadReportIn",
        "LoadSample",
        "LoadWeights",
        "LocalChoice",
        "LocalInFlight",
        "MAX_BATCH_SIZE",
        "ManualClock",
        "NAME_CHARS",
        "NAME_MAX_LEN",
        "NAME_PATTERN",
        "NotFound",
        "OPERATION_SOURCES",
        "OUTLIER_FLAGS",
        "OUTLIER_RANGES",
        "Operation",
        "OperationSettings",
        "OutcomeReport",
        "OutlierSettings",
        "PendingDecision",
        "PendingDecisions",
        "Pool",
        "PoolSettings",
        "ProbeRecord",
        "ProbeRules",
        "Probed",
        "RateLimit",
        "RateLimiter",
        "RateTaken",
        "Registry",
        "ResourceExhausted",
        "ServerSpec",
        "SystemClock",
        "Unavailable",
        "check_address",
        "check_count",
        "check_name",
        "check_range",
        "check_ttl_ms",
        "host_score",
        "parse_operation",
        "parse_outlier",
        "parse_params",
        "parse_pool",
        "parse_rate_limit",
        "parse_server",
        "parse_servers",
        "pool_reading",
        "shown",
    ]
    for name in loadwarden.policy.__all__:
        assert getattr(loadwarden.policy, name) is not None


def test_the_families_public_names() -> None:
    assert sorted(strategies.__all__) == [
        "Choice",
        "Feedback",
        "STRATEGIES",
        "Strategy",
        "StrategyBase",
        "StrategyContext",
        "build_strategy",
        "check_strategy",
        "merge_snapshots",
        "strategy_class",
    ]
    assert sorted(limits.__all__) == ["LIMITS", "LimitAlgorithm", "build_limit", "check_limit", "clamp", "limit_class"]
    assert sorted(batching.__all__) == [
        "BATCH_CONTROLLERS",
        "BatchController",
        "LatencyTargetController",
        "LatencyTargetParams",
        "LoadOutlook",
        "MODES",
        "ThresholdController",
        "ThresholdParams",
        "build_controller",
    ]
    assert sorted(forecast.__all__) == ["Forecast", "ForecastSettings", "ModelScore", "Prediction", "forecast"]
    assert sorted(scaling.__all__) == ["LeadTimes", "Recommendation", "Scaler", "ScalingSettings"]
