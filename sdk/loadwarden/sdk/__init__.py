"""The loadwarden SDK: ask the Decision service which backend takes a request, may work start, how big a batch.
May import grpc, protobuf, tenacity, the OpenTelemetry API and the generated loadwarden.v1; never the service.

Example:
    from loadwarden.sdk import Client

    with Client("127.0.0.1:50051") as client:
        with client.route("api") as route:
            call_backend(route.address)
        with client.slot("ml", wait_s=2.0) as lease:
            run_inference()   # LeaseLostError at the exit if the lease was lost meanwhile
        size = client.batch_size("import", default=100)
        client.admin.drain_server("api", "s1")
"""

from loadwarden.sdk._admin_types import Configured, OperationConfig, OutlierDetection, PoolConfig, ServerSpec
from loadwarden.sdk._async.admin import AsyncAdmin
from loadwarden.sdk._async.client import AsyncClient
from loadwarden.sdk._async.queue import AsyncRequestQueue
from loadwarden.sdk._async.resource_pool import AsyncResourcePool
from loadwarden.sdk._breaker import BreakerConfig, BreakerEvent, BreakerState, CircuitBreaker
from loadwarden.sdk._errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    LeaseLostError,
    LoadwardenError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RpcCancelledError,
    ServiceError,
    SlotDenied,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from loadwarden.sdk._queue import QueueFull, QueueStats, QueueTimeout
from loadwarden.sdk._reporter import BackendReporter, ReporterStats
from loadwarden.sdk._resilience import BreakerOpenError, deadline
from loadwarden.sdk._resource_pool import ResourcePoolClosed, ResourcePoolStats, ResourcePoolTimeout
from loadwarden.sdk._retry import RetryConfig
from loadwarden.sdk._route import Route
from loadwarden.sdk._sync.admin import Admin
from loadwarden.sdk._sync.client import Client
from loadwarden.sdk._sync.queue import RequestQueue
from loadwarden.sdk._sync.resource_pool import ResourcePool
from loadwarden.sdk._tls import TlsConfig
from loadwarden.sdk._types import (
    BatchAdjustment,
    BatchMode,
    BatchReport,
    BatchSize,
    HealthCheckStatus,
    HeldLease,
    HostLoad,
    Lease,
    LoadReport,
    LoadSource,
    LoadStatus,
    OperationStatus,
    OutcomeStats,
    PoolStatus,
    Selection,
    ServerState,
    ServerStatus,
)

__all__ = [
    "Admin",
    "AsyncAdmin",
    "AsyncClient",
    "AsyncRequestQueue",
    "AsyncResourcePool",
    "BackendReporter",
    "BatchAdjustment",
    "BatchMode",
    "BatchReport",
    "BatchSize",
    "BreakerConfig",
    "BreakerEvent",
    "BreakerOpenError",
    "BreakerState",
    "CircuitBreaker",
    "Client",
    "Configured",
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
    "OperationConfig",
    "OperationStatus",
    "OutcomeStats",
    "OutlierDetection",
    "PermissionDeniedError",
    "PoolConfig",
    "PoolStatus",
    "QueueFull",
    "QueueStats",
    "QueueTimeout",
    "ReporterStats",
    "RequestQueue",
    "ResourceExhaustedError",
    "ResourcePool",
    "ResourcePoolClosed",
    "ResourcePoolStats",
    "ResourcePoolTimeout",
    "RetryConfig",
    "Route",
    "RpcCancelledError",
    "Selection",
    "ServerSpec",
    "ServerState",
    "ServerStatus",
    "ServiceError",
    "SlotDenied",
    "TlsConfig",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "deadline",
]
