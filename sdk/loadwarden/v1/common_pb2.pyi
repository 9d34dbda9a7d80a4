import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SERVER_STATE_UNSPECIFIED: _ClassVar[ServerState]
    SERVER_STATE_SERVING: _ClassVar[ServerState]
    SERVER_STATE_STALE: _ClassVar[ServerState]
    SERVER_STATE_DRAINING: _ClassVar[ServerState]
    SERVER_STATE_EJECTED: _ClassVar[ServerState]
    SERVER_STATE_UNHEALTHY: _ClassVar[ServerState]
    SERVER_STATE_DEGRADED: _ClassVar[ServerState]

class LoadLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_LEVEL_UNSPECIFIED: _ClassVar[LoadLevel]
    LOAD_LEVEL_LOW: _ClassVar[LoadLevel]
    LOAD_LEVEL_MEDIUM: _ClassVar[LoadLevel]
    LOAD_LEVEL_HIGH: _ClassVar[LoadLevel]
    LOAD_LEVEL_UNKNOWN: _ClassVar[LoadLevel]

class BatchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_MODE_UNSPECIFIED: _ClassVar[BatchMode]
    BATCH_MODE_THRESHOLD: _ClassVar[BatchMode]
    BATCH_MODE_LATENCY_TARGET: _ClassVar[BatchMode]

class LoadSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_SOURCE_UNSPECIFIED: _ClassVar[LoadSource]
    LOAD_SOURCE_HOST: _ClassVar[LoadSource]
    LOAD_SOURCE_POOL: _ClassVar[LoadSource]
SERVER_STATE_UNSPECIFIED: ServerState
SERVER_STATE_SERVING: ServerState
SERVER_STATE_STALE: ServerState
SERVER_STATE_DRAINING: ServerState
SERVER_STATE_EJECTED: ServerState
SERVER_STATE_UNHEALTHY: ServerState
SERVER_STATE_DEGRADED: ServerState
LOAD_LEVEL_UNSPECIFIED: LoadLevel
LOAD_LEVEL_LOW: LoadLevel
LOAD_LEVEL_MEDIUM: LoadLevel
LOAD_LEVEL_HIGH: LoadLevel
LOAD_LEVEL_UNKNOWN: LoadLevel
BATCH_MODE_UNSPECIFIED: BatchMode
BATCH_MODE_THRESHOLD: BatchMode
BATCH_MODE_LATENCY_TARGET: BatchMode
LOAD_SOURCE_UNSPECIFIED: LoadSource
LOAD_SOURCE_HOST: LoadSource
LOAD_SOURCE_POOL: LoadSource

class HealthCheckStatus(_message.Message):
    __slots__ = ("state", "checked_at", "latency_ms", "problem", "consecutive_failures", "consecutive_successes", "checks_total")
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_AT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    CHECKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    state: str
    checked_at: _timestamp_pb2.Timestamp
    latency_ms: float
    problem: str
    consecutive_failures: int
    consecutive_successes: int
    checks_total: int
    def __init__(self, state: _Optional[str] = ..., checked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latency_ms: _Optional[float] = ..., problem: _Optional[str] = ..., consecutive_failures: _Optional[int] = ..., consecutive_successes: _Optional[int] = ..., checks_total: _Optional[int] = ...) -> None: ...

class ServerSpec(_message.Message):
    __slots__ = ("id", "address", "weight")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    weight: int
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("pool", "server_id", "cpu_percent", "memory_percent", "active_requests", "mean_latency_ms", "error_rate", "application_utilization", "requests_per_second", "errors_per_second", "named_metrics")
    class NamedMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    POOL_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ERRORS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    NAMED_METRICS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    server_id: str
    cpu_percent: float
    memory_percent: float
    active_requests: int
    mean_latency_ms: float
    error_rate: float
    application_utilization: float
    requests_per_second: float
    errors_per_second: float
    named_metrics: _containers.ScalarMap[str, float]
    def __init__(self, pool: _Optional[str] = ..., server_id: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., active_requests: _Optional[int] = ..., mean_latency_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., application_utilization: _Optional[float] = ..., requests_per_second: _Optional[float] = ..., errors_per_second: _Optional[float] = ..., named_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PoolConfig(_message.Message):
    __slots__ = ("name", "strategy", "strategy_params", "load_report_ttl_ms", "require_load_report", "max_concurrency", "max_queue_length", "max_wait_ms", "lease_ttl_ms", "limit_algorithm", "limit_params", "rate_limit", "rate_burst", "servers", "outlier_detection", "slow_start_ms", "rate_limit_keys", "max_lease_ttl_ms", "identity_rate_limit", "identity_rate_burst", "rate_limit_keys_per_identity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_PARAMS_FIELD_NUMBER: _ClassVar[int]
    LOAD_REPORT_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LOAD_REPORT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_BURST_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    OUTLIER_DETECTION_FIELD_NUMBER: _ClassVar[int]
    SLOW_START_MS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_RATE_BURST_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_KEYS_PER_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    strategy: str
    strategy_params: _struct_pb2.Struct
    load_report_ttl_ms: int
    require_load_report: bool
    max_concurrency: int
    max_queue_length: int
    max_wait_ms: int
    lease_ttl_ms: int
    limit_algorithm: str
    limit_params: _struct_pb2.Struct
    rate_limit: str
    rate_burst: int
    servers: _containers.RepeatedCompositeFieldContainer[ServerSpec]
    outlier_detection: OutlierDetection
    slow_start_ms: int
    rate_limit_keys: int
    max_lease_ttl_ms: int
    identity_rate_limit: str
    identity_rate_burst: int
    rate_limit_keys_per_identity: int
    def __init__(self, name: _Optional[str] = ..., strategy: _Optional[str] = ..., strategy_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., load_report_ttl_ms: _Optional[int] = ..., require_load_report: _Optional[bool] = ..., max_concurrency: _Optional[int] = ..., max_queue_length: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., lease_ttl_ms: _Optional[int] = ..., limit_algorithm: _Optional[str] = ..., limit_params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., rate_limit: _Optional[str] = ..., rate_burst: _Optional[int] = ..., servers: _Optional[_Iterable[_Union[ServerSpec, _Mapping]]] = ..., outlier_detection: _Optional[_Union[OutlierDetection, _Mapping]] = ..., slow_start_ms: _Optional[int] = ..., rate_limit_keys: _Optional[int] = ..., max_lease_ttl_ms: _Optional[int] = ..., identity_rate_limit: _Optional[str] = ..., identity_rate_burst: _Optional[int] = ..., rate_limit_keys_per_identity: _Optional[int] = ...) -> None: ...

class OutlierDetection(_message.Message):
    __slots__ = ("consecutive_failures", "base_ejection_time_ms", "max_ejection_time_ms", "max_ejection_percent", "panic_threshold_percent", "disabled", "overdue_factor", "overdue_disabled")
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_EJECTION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PANIC_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FACTOR_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_DISABLED_FIELD_NUMBER: _ClassVar[int]
    consecutive_failures: int
    base_ejection_time_ms: int
    max_ejection_time_ms: int
    max_ejection_percent: int
    panic_threshold_percent: int
    disabled: bool
    overdue_factor: int
    overdue_disabled: bool
    def __init__(self, consecutive_failures: _Optional[int] = ..., base_ejection_time_ms: _Optional[int] = ..., max_ejection_time_ms: _Optional[int] = ..., max_ejection_percent: _Optional[int] = ..., panic_threshold_percent: _Optional[int] = ..., disabled: _Optional[bool] = ..., overdue_factor: _Optional[int] = ..., overdue_disabled: _Optional[bool] = ...) -> None: ...

class OperationConfig(_message.Message):
    __slots__ = ("name", "min_batch_size", "max_batch_size", "default_batch_size", "low_threshold_percent", "high_threshold_percent", "cooldown_ms", "min_step", "mode", "target_latency_ms", "additive_step", "backoff_ratio", "load_source", "pool")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOW_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    HIGH_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ADDITIVE_STEP_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_RATIO_FIELD_NUMBER: _ClassVar[int]
    LOAD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    name: str
    min_batch_size: int
    max_batch_size: int
    default_batch_size: int
    low_threshold_percent: float
    high_threshold_percent: float
    cooldown_ms: int
    min_step: int
    mode: BatchMode
    target_latency_ms: float
    additive_step: int
    backoff_ratio: float
    load_source: LoadSource
    pool: str
    def __init__(self, name: _Optional[str] = ..., min_batch_size: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., default_batch_size: _Optional[int] = ..., low_threshold_percent: _Optional[float] = ..., high_threshold_percent: _Optional[float] = ..., cooldown_ms: _Optional[int] = ..., min_step: _Optional[int] = ..., mode: _Optional[_Union[BatchMode, str]] = ..., target_latency_ms: _Optional[float] = ..., additive_step: _Optional[int] = ..., backoff_ratio: _Optional[float] = ..., load_source: _Optional[_Union[LoadSource, str]] = ..., pool: _Optional[str] = ...) -> None: ...

class ServerStatus(_message.Message):
    __slots__ = ("id", "address", "weight", "state", "in_flight", "load", "load_reported_at", "ewma_latency_ms", "error_rate", "selections_total", "ejections_total", "ejected_until", "effective_weight", "consecutive_failures", "health_check")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LOAD_REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    EWMA_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    SELECTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EJECTIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EJECTED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    weight: int
    state: ServerState
    in_flight: int
    load: LoadReport
    load_reported_at: _timestamp_pb2.Timestamp
    ewma_latency_ms: float
    error_rate: float
    selections_total: int
    ejections_total: int
    ejected_until: _timestamp_pb2.Timestamp
    effective_weight: float
    consecutive_failures: int
    health_check: HealthCheckStatus
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ..., state: _Optional[_Union[ServerState, str]] = ..., in_flight: _Optional[int] = ..., load: _Optional[_Union[LoadReport, _Mapping]] = ..., load_reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ewma_latency_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., selections_total: _Optional[int] = ..., ejections_total: _Optional[int] = ..., ejected_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., effective_weight: _Optional[float] = ..., consecutive_failures: _Optional[int] = ..., health_check: _Optional[_Union[HealthCheckStatus, _Mapping]] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("name", "strategy", "servers", "eligible_servers", "in_flight", "active_leases", "queue_length", "concurrency_limit", "strategy_stats", "panic", "requests_total")
    class StrategyStatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_SERVERS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LEASES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_STATS_FIELD_NUMBER: _ClassVar[int]
    PANIC_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    strategy: str
    servers: _containers.RepeatedCompositeFieldContainer[ServerStatus]
    eligible_servers: int
    in_flight: int
    active_leases: int
    queue_length: int
    concurrency_limit: int
    strategy_stats: _containers.ScalarMap[str, float]
    panic: bool
    requests_total: int
    def __init__(self, name: _Optional[str] = ..., strategy: _Optional[str] = ..., servers: _Optional[_Iterable[_Union[ServerStatus, _Mapping]]] = ..., eligible_servers: _Optional[int] = ..., in_flight: _Optional[int] = ..., active_leases: _Optional[int] = ..., queue_length: _Optional[int] = ..., concurrency_limit: _Optional[int] = ..., strategy_stats: _Optional[_Mapping[str, float]] = ..., panic: _Optional[bool] = ..., requests_total: _Optional[int] = ...) -> None: ...

class BatchAdjustment(_message.Message):
    __slots__ = ("at", "previous_size", "new_size", "reason", "load_score")
    AT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SIZE_FIELD_NUMBER: _ClassVar[int]
    NEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LOAD_SCORE_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    previous_size: int
    new_size: int
    reason: str
    load_score: float
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., previous_size: _Optional[int] = ..., new_size: _Optional[int] = ..., reason: _Optional[str] = ..., load_score: _Optional[float] = ...) -> None: ...

class OperationStatus(_message.Message):
    __slots__ = ("name", "batch_size", "last_load_score", "adjustments_total", "recent_adjustments", "mode", "load_source", "pool", "min_batch_size", "max_batch_size", "default_batch_size", "last_reason", "fallback", "decisions_total")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_LOAD_SCORE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RECENT_ADJUSTMENTS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LOAD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    MIN_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    name: str
    batch_size: int
    last_load_score: float
    adjustments_total: int
    recent_adjustments: _containers.RepeatedCompositeFieldContainer[BatchAdjustment]
    mode: BatchMode
    load_source: LoadSource
    pool: str
    min_batch_size: int
    max_batch_size: int
    default_batch_size: int
    last_reason: str
    fallback: bool
    decisions_total: int
    def __init__(self, name: _Optional[str] = ..., batch_size: _Optional[int] = ..., last_load_score: _Optional[float] = ..., adjustments_total: _Optional[int] = ..., recent_adjustments: _Optional[_Iterable[_Union[BatchAdjustment, _Mapping]]] = ..., mode: _Optional[_Union[BatchMode, str]] = ..., load_source: _Optional[_Union[LoadSource, str]] = ..., pool: _Optional[str] = ..., min_batch_size: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., default_batch_size: _Optional[int] = ..., last_reason: _Optional[str] = ..., fallback: _Optional[bool] = ..., decisions_total: _Optional[int] = ...) -> None: ...

class HostLoad(_message.Message):
    __slots__ = ("cpu_percent", "memory_percent", "load_average_percent", "load_score", "sampled_at", "stale", "problem")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVERAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    LOAD_SCORE_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_AT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_percent: float
    load_average_percent: float
    load_score: float
    sampled_at: _timestamp_pb2.Timestamp
    stale: bool
    problem: str
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., load_average_percent: _Optional[float] = ..., load_score: _Optional[float] = ..., sampled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stale: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...

class LoadStatus(_message.Message):
    __slots__ = ("generated_at", "pools", "operations", "pending_decisions", "host")
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    PENDING_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    generated_at: _timestamp_pb2.Timestamp
    pools: _containers.RepeatedCompositeFieldContainer[PoolStatus]
    operations: _containers.RepeatedCompositeFieldContainer[OperationStatus]
    pending_decisions: int
    host: HostLoad
    def __init__(self, generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pools: _Optional[_Iterable[_Union[PoolStatus, _Mapping]]] = ..., operations: _Optional[_Iterable[_Union[OperationStatus, _Mapping]]] = ..., pending_decisions: _Optional[int] = ..., host: _Optional[_Union[HostLoad, _Mapping]] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "pool", "ttl_ms", "expires_at")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    pool: str
    ttl_ms: int
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, lease_id: _Optional[str] = ..., pool: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
