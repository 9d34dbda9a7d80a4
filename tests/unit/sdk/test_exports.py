"""The public surface of loadwarden.sdk, pinned: a change here is an API change."""

from __future__ import annotations

import types

import loadwarden.sdk

PUBLIC_NAMES = {
    "Admin",
    "AsyncAdmin",
    "Configured",
    "OperationConfig",
    "OutlierDetection",
    "PoolConfig",
    "ServerSpec",
    "AsyncClient",
    "AsyncRequestQueue",
    "AsyncResourcePool",
    "ResourcePool",
    "ResourcePoolClosed",
    "ResourcePoolStats",
    "ResourcePoolTimeout",
    "BackendReporter",
    "QueueFull",
    "QueueStats",
    "QueueTimeout",
    "ReporterStats",
    "RequestQueue",
    "BreakerConfig",
    "BreakerEvent",
    "BreakerOpenError",
    "BreakerState",
    "CircuitBreaker",
    "RetryConfig",
    "deadline",
    "BatchAdjustment",
    "BatchMode",
    "BatchReport",
    "BatchSize",
    "Client",
    "DeadlineExceededError",
    "HealthCheckStatus",
    "HeldLease",
    "HostLoad",
    "InvalidArgumentError",
    "Lease",
    "LeaseLostError",
    "LoadReport",
    "LoadSource",
    "LoadStatus",
    "LoadwardenError",
    "NotFoundError",
    "OperationStatus",
    "OutcomeStats",
    "PermissionDeniedError",
    "PoolStatus",
    "ResourceExhaustedError",
    "Route",
    "RpcCancelledError",
    "Selection",
    "ServerState",
    "ServerStatus",
    "ServiceError",
    "SlotDenied",
    "TlsConfig",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
}


def test_all_is_pinned() -> None:
    assert sorted(loadwarden.sdk.__all__) == sorted(PUBLIC_NAMES)


def test_every_public_attribute_is_in_all() -> None:
    public = {
        name
        for name, value in vars(loadwarden.sdk).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert public == PUBLIC_NAMES


def test_public_names_come_from_the_sdk_not_generated_code() -> None:
    for name in PUBLIC_NAMES:
        assert getattr(loadwarden.sdk, name).__module__.startswith("loadwarden.sdk."), name
