"""The server's public surface is pinned: adding or removing a name is a decision."""

import loadwarden.server


def test_public_names() -> None:
    assert sorted(loadwarden.server.__all__) == [
        "AdminSettings",
        "AuthSettings",
        "Clock",
        "ConfigError",
        "CoreLimits",
        "DecisionCore",
        "HealthCheckSettings",
        "ManualClock",
        "MonitorSettings",
        "OperationSettings",
        "OutlierSettings",
        "PoolSettings",
        "PoolSpec",
        "RateLimit",
        "RunningService",
        "ServerSpec",
        "ServiceConfig",
        "StateSettings",
        "SystemClock",
        "TlsSettings",
        "load_config",
        "main",
        "serve",
        "start_service",
    ]
    for name in loadwarden.server.__all__:
        assert getattr(loadwarden.server, name) is not None
