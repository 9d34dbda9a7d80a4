"""Translation between the SDK's admin types and AdminService's messages.

Shared by `Admin` and `AsyncAdmin`: neither builds or reads a message itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from google.protobuf.struct_pb2 import Struct

from loadwarden.sdk._admin_types import Configured, OperationConfig, OutlierDetection, PoolConfig, ServerSpec
from loadwarden.sdk._convert import operation_status_from_proto, pool_status_from_proto, server_status_from_proto
from loadwarden.sdk._types import BatchMode, LoadSource, OperationStatus, PoolStatus, ServerStatus
from loadwarden.v1 import admin_pb2 as _admin
from loadwarden.v1 import common_pb2 as _common

# The RPCs of AdminService: the client's call path sends these to its AdminService stub.
ADMIN_METHODS = frozenset(method.name for method in _admin.DESCRIPTOR.services_by_name["AdminService"].methods)

_BATCH_MODE_TO_PROTO: dict[BatchMode, _common.BatchMode] = {
    BatchMode.UNSPECIFIED: _common.BATCH_MODE_UNSPECIFIED,
    BatchMode.THRESHOLD: _common.BATCH_MODE_THRESHOLD,
    BatchMode.LATENCY_TARGET: _common.BATCH_MODE_LATENCY_TARGET,
}

_LOAD_SOURCE_TO_PROTO: dict[LoadSource, _common.LoadSource] = {
    LoadSource.UNSPECIFIED: _common.LOAD_SOURCE_UNSPECIFIED,
    LoadSource.HOST: _common.LOAD_SOURCE_HOST,
    LoadSource.POOL: _common.LOAD_SOURCE_POOL,
}


def check_name(name: str, value: object) -> str:
    """`value`, a name or address; ValueError naming `name` unless it is a non-empty string.

    Its characters are the service's to check: it answers INVALID_ARGUMENT naming the field.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def configure_pool_request(pool: PoolConfig) -> _admin.ConfigurePoolRequest:
    if not isinstance(pool, PoolConfig):
        raise TypeError(f"pool must be a PoolConfig, got {type(pool).__name__}")
    message = _common.PoolConfig(
        name=pool.name,
        strategy=pool.strategy,
        load_report_ttl_ms=pool.load_report_ttl_ms,
        require_load_report=pool.require_load_report,
        max_concurrency=pool.max_concurrency,
        max_queue_length=pool.max_queue_length,
        max_wait_ms=pool.max_wait_ms,
        lease_ttl_ms=pool.lease_ttl_ms,
        limit_algorithm=pool.limit_algorithm,
        rate_limit=pool.rate_limit,
        rate_burst=pool.rate_burst,
        servers=[server_spec_to_proto(server) for server in pool.servers],
        slow_start_ms=pool.slow_start_ms,
        rate_limit_keys=pool.rate_limit_keys,
        max_lease_ttl_ms=pool.max_lease_ttl_ms,
        identity_rate_limit=pool.identity_rate_limit,
        identity_rate_burst=pool.identity_rate_burst,
        rate_limit_keys_per_identity=pool.rate_limit_keys_per_identity,
    )
    if pool.strategy_params is not None:
        message.strategy_params.CopyFrom(_struct(pool.strategy_params))
    if pool.limit_params is not None:
        message.limit_params.CopyFrom(_struct(pool.limit_params))
    if pool.outlier_detection is not None:
        message.outlier_detection.CopyFrom(_outlier_to_proto(pool.outlier_detection))
    return _admin.ConfigurePoolRequest(pool=message)


def server_spec_to_proto(server: ServerSpec) -> _common.ServerSpec:
    return _common.ServerSpec(id=server.id, address=server.address, weight=server.weight)


def _outlier_to_proto(outlier: OutlierDetection) -> _common.OutlierDetection:
    return _common.OutlierDetection(
        consecutive_failures=outlier.consecutive_failures,
        base_ejection_time_ms=outlier.base_ejection_time_ms,
        max_ejection_time_ms=outlier.max_ejection_time_ms,
        max_ejection_percent=outlier.max_ejection_percent,
        panic_threshold_percent=outlier.panic_threshold_percent,
        disabled=outlier.disabled,
        overdue_factor=outlier.overdue_factor,
        overdue_disabled=outlier.overdue_disabled,
    )


def _struct(params: Mapping[str, object]) -> Struct:
    struct = Struct()
    struct.update(cast(Mapping[str, Any], params))  # PoolConfig's checked plain copy: JSON's values only
    return struct


def configured_pool(response: _admin.ConfigurePoolResponse) -> Configured[PoolStatus]:
    return Configured(pool_status_from_proto(response.pool), response.created)


def register_server_request(pool: str, server_id: str, address: str, weight: int) -> _admin.RegisterServerRequest:
    check_name("pool", pool)
    check_name("server_id", server_id)
    check_name("address", address)
    spec = ServerSpec(server_id, address, weight)  # checks `weight`, by that name
    return _admin.RegisterServerRequest(pool=pool, server=server_spec_to_proto(spec))


def registered_server(response: _admin.RegisterServerResponse) -> Configured[ServerStatus]:
    return Configured(server_status_from_proto(response.server), response.created)


def drain_server_request(pool: str, server_id: str, *, draining: bool) -> _admin.DrainServerRequest:
    return _admin.DrainServerRequest(
        pool=check_name("pool", pool),
        server_id=check_name("server_id", server_id),
        state=_admin.DRAIN_STATE_DRAINING if draining else _admin.DRAIN_STATE_SERVING,
    )


def configure_operation_request(operation: OperationConfig) -> _admin.ConfigureOperationRequest:
    if not isinstance(operation, OperationConfig):
        raise TypeError(f"operation must be an OperationConfig, got {type(operation).__name__}")
    return _admin.ConfigureOperationRequest(
        operation=_common.OperationConfig(
            name=operation.name,
            min_batch_size=operation.min_batch_size,
            max_batch_size=operation.max_batch_size,
            default_batch_size=operation.default_batch_size,
            low_threshold_percent=operation.low_threshold_percent,
            high_threshold_percent=operation.high_threshold_percent,
            cooldown_ms=operation.cooldown_ms,
            min_step=operation.min_step,
            mode=_BATCH_MODE_TO_PROTO[operation.mode],
            target_latency_ms=operation.target_latency_ms,
            additive_step=operation.additive_step,
            backoff_ratio=operation.backoff_ratio,
            load_source=_LOAD_SOURCE_TO_PROTO[operation.load_source],
            pool=operation.pool,
        )
    )


def configured_operation(response: _admin.ConfigureOperationResponse) -> Configured[OperationStatus]:
    return Configured(operation_status_from_proto(response.operation), response.created)
