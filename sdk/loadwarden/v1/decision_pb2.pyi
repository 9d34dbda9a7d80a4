import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from loadwarden.v1 import common_pb2 as _common_pb2
from loadwarden.v1 import planning_pb2 as _planning_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DenialReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DENIAL_REASON_UNSPECIFIED: _ClassVar[DenialReason]
    DENIAL_REASON_AT_CAPACITY: _ClassVar[DenialReason]
    DENIAL_REASON_QUEUE_TIMEOUT: _ClassVar[DenialReason]
    DENIAL_REASON_NO_ELIGIBLE_SERVER: _ClassVar[DenialReason]
DENIAL_REASON_UNSPECIFIED: DenialReason
DENIAL_REASON_AT_CAPACITY: DenialReason
DENIAL_REASON_QUEUE_TIMEOUT: DenialReason
DENIAL_REASON_NO_ELIGIBLE_SERVER: DenialReason

class SelectServerRequest(_message.Message):
    __slots__ = ("pool", "exclude_server_ids")
    POOL_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SERVER_IDS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    exclude_server_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pool: _Optional[str] = ..., exclude_server_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SelectServerResponse(_message.Message):
    __slots__ = ("decision_id", "server_id", "address", "strategy", "explored", "decision_ttl_ms")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    DECISION_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    server_id: str
    address: str
    strategy: str
    explored: bool
    decision_ttl_ms: int
    def __init__(self, decision_id: _Optional[str] = ..., server_id: _Optional[str] = ..., address: _Optional[str] = ..., strategy: _Optional[str] = ..., explored: _Optional[bool] = ..., decision_ttl_ms: _Optional[int] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("decision_id", "success", "latency_ms", "status", "local")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    success: bool
    latency_ms: float
    status: str
    local: LocalDecision
    def __init__(self, decision_id: _Optional[str] = ..., success: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., status: _Optional[str] = ..., local: _Optional[_Union[LocalDecision, _Mapping]] = ...) -> None: ...

class LocalDecision(_message.Message):
    __slots__ = ("pool", "server_id", "table_version", "features", "state", "explored", "sample_weight")
    POOL_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPLORED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    pool: str
    server_id: str
    table_version: int
    features: _containers.RepeatedScalarFieldContainer[float]
    state: str
    explored: bool
    sample_weight: float
    def __init__(self, pool: _Optional[str] = ..., server_id: _Optional[str] = ..., table_version: _Optional[int] = ..., features: _Optional[_Iterable[float]] = ..., state: _Optional[str] = ..., explored: _Optional[bool] = ..., sample_weight: _Optional[float] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("outcomes", "client_instance", "in_flight", "in_flight_seq")
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_SEQ_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    client_instance: str
    in_flight: _containers.RepeatedCompositeFieldContainer[LocalInFlight]
    in_flight_seq: int
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ..., client_instance: _Optional[str] = ..., in_flight: _Optional[_Iterable[_Union[LocalInFlight, _Mapping]]] = ..., in_flight_seq: _Optional[int] = ...) -> None: ...

class LocalInFlight(_message.Message):
    __slots__ = ("pool", "server_ids", "counts", "complete")
    POOL_FIELD_NUMBER: _ClassVar[int]
    SERVER_IDS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    pool: str
    server_ids: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    complete: bool
    def __init__(self, pool: _Optional[str] = ..., server_ids: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ..., complete: _Optional[bool] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("applied", "unknown_decision_ids", "unknown_local")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_DECISION_IDS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_LOCAL_FIELD_NUMBER: _ClassVar[int]
    applied: int
    unknown_decision_ids: _containers.RepeatedScalarFieldContainer[str]
    unknown_local: int
    def __init__(self, applied: _Optional[int] = ..., unknown_decision_ids: _Optional[_Iterable[str]] = ..., unknown_local: _Optional[int] = ...) -> None: ...

class AcquireSlotRequest(_message.Message):
    __slots__ = ("pool", "request_id", "priority", "max_wait_ms", "lease_ttl_ms", "client_key", "select_server")
    POOL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_MS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_FIELD_NUMBER: _ClassVar[int]
    SELECT_SERVER_FIELD_NUMBER: _ClassVar[int]
    pool: str
    request_id: str
    priority: int
    max_wait_ms: int
    lease_ttl_ms: int
    client_key: str
    select_server: bool
    def __init__(self, pool: _Optional[str] = ..., request_id: _Optional[str] = ..., priority: _Optional[int] = ..., max_wait_ms: _Optional[int] = ..., lease_ttl_ms: _Optional[int] = ..., client_key: _Optional[str] = ..., select_server: _Optional[bool] = ...) -> None: ...

class AcquireSlotResponse(_message.Message):
    __slots__ = ("granted", "decision_id", "lease", "server_id", "address", "denial_reason", "reason", "retry_after_ms", "queue_wait_ms")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DENIAL_REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    decision_id: str
    lease: _common_pb2.Lease
    server_id: str
    address: str
    denial_reason: DenialReason
    reason: str
    retry_after_ms: int
    queue_wait_ms: int
    def __init__(self, granted: _Optional[bool] = ..., decision_id: _Optional[str] = ..., lease: _Optional[_Union[_common_pb2.Lease, _Mapping]] = ..., server_id: _Optional[str] = ..., address: _Optional[str] = ..., denial_reason: _Optional[_Union[DenialReason, str]] = ..., reason: _Optional[str] = ..., retry_after_ms: _Optional[int] = ..., queue_wait_ms: _Optional[int] = ...) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "ttl_ms")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    ttl_ms: int
    def __init__(self, lease_id: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: _common_pb2.Lease
    def __init__(self, lease: _Optional[_Union[_common_pb2.Lease, _Mapping]] = ...) -> None: ...

class ReleaseSlotRequest(_message.Message):
    __slots__ = ("lease_id", "request_id", "success", "latency_ms", "pool", "abandoned_request_ids")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    request_id: str
    success: bool
    latency_ms: float
    pool: str
    abandoned_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., request_id: _Optional[str] = ..., success: _Optional[bool] = ..., latency_ms: _Optional[float] = ..., pool: _Optional[str] = ..., abandoned_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseSlotResponse(_message.Message):
    __slots__ = ("released", "already_released", "abandoned")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_RELEASED_FIELD_NUMBER: _ClassVar[int]
    ABANDONED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    already_released: bool
    abandoned: int
    def __init__(self, released: _Optional[bool] = ..., already_released: _Optional[bool] = ..., abandoned: _Optional[int] = ...) -> None: ...

class GetBatchSizeRequest(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: str
    def __init__(self, operation: _Optional[str] = ...) -> None: ...

class GetBatchSizeResponse(_message.Message):
    __slots__ = ("decision_id", "batch_size", "load_score", "load_level", "reason", "fallback")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOAD_SCORE_FIELD_NUMBER: _ClassVar[int]
    LOAD_LEVEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    batch_size: int
    load_score: float
    load_level: _common_pb2.LoadLevel
    reason: str
    fallback: bool
    def __init__(self, decision_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., load_score: _Optional[float] = ..., load_level: _Optional[_Union[_common_pb2.LoadLevel, str]] = ..., reason: _Optional[str] = ..., fallback: _Optional[bool] = ...) -> None: ...

class BatchReport(_message.Message):
    __slots__ = ("operation", "decision_id", "batch_size", "duration_ms", "success")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    operation: str
    decision_id: str
    batch_size: int
    duration_ms: float
    success: bool
    def __init__(self, operation: _Optional[str] = ..., decision_id: _Optional[str] = ..., batch_size: _Optional[int] = ..., duration_ms: _Optional[float] = ..., success: _Optional[bool] = ...) -> None: ...

class ReportBatchRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[BatchReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[BatchReport, _Mapping]]] = ...) -> None: ...

class ReportBatchResponse(_message.Message):
    __slots__ = ("applied",)
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    def __init__(self, applied: _Optional[int] = ...) -> None: ...

class ReportLoadRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[_common_pb2.LoadReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[_common_pb2.LoadReport, _Mapping]]] = ...) -> None: ...

class ReportLoadResponse(_message.Message):
    __slots__ = ("applied", "received_at")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    applied: int
    received_at: _timestamp_pb2.Timestamp
    def __init__(self, applied: _Optional[int] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetLoadStatusRequest(_message.Message):
    __slots__ = ("pool", "page_size", "page_token")
    POOL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pool: str
    page_size: int
    page_token: str
    def __init__(self, pool: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetLoadStatusResponse(_message.Message):
    __slots__ = ("status", "next_page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.LoadStatus
    next_page_token: str
    def __init__(self, status: _Optional[_Union[_common_pb2.LoadStatus, _Mapping]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchLoadStatusRequest(_message.Message):
    __slots__ = ("pool", "interval_ms")
    POOL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    interval_ms: int
    def __init__(self, pool: _Optional[str] = ..., interval_ms: _Optional[int] = ...) -> None: ...

class WatchLoadStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.LoadStatus
    def __init__(self, status: _Optional[_Union[_common_pb2.LoadStatus, _Mapping]] = ...) -> None: ...

class WatchRoutesRequest(_message.Message):
    __slots__ = ("pools", "client_instance")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedScalarFieldContainer[str]
    client_instance: str
    def __init__(self, pools: _Optional[_Iterable[str]] = ..., client_instance: _Optional[str] = ...) -> None: ...

class WatchRoutesResponse(_message.Message):
    __slots__ = ("table",)
    TABLE_FIELD_NUMBER: _ClassVar[int]
    table: RouteTable
    def __init__(self, table: _Optional[_Union[RouteTable, _Mapping]] = ...) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("pool", "version", "epoch", "full", "base_version", "servers", "removed_server_ids", "strategy", "strategy_params_json", "learned_json", "consecutive_failures", "base_ejection_time_ms", "panic_threshold_percent", "panic", "generated_at", "deleted", "in_flight_seq")
    POOL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SERVER_IDS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    LEARNED_JSON_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    BASE_EJECTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PANIC_THRESHOLD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PANIC_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_SEQ_FIELD_NUMBER: _ClassVar[int]
    pool: str
    version: int
    epoch: str
    full: bool
    base_version: int
    servers: _containers.RepeatedCompositeFieldContainer[RouteServer]
    removed_server_ids: _containers.RepeatedScalarFieldContainer[str]
    strategy: str
    strategy_params_json: str
    learned_json: str
    consecutive_failures: int
    base_ejection_time_ms: int
    panic_threshold_percent: int
    panic: bool
    generated_at: _timestamp_pb2.Timestamp
    deleted: bool
    in_flight_seq: int
    def __init__(self, pool: _Optional[str] = ..., version: _Optional[int] = ..., epoch: _Optional[str] = ..., full: _Optional[bool] = ..., base_version: _Optional[int] = ..., servers: _Optional[_Iterable[_Union[RouteServer, _Mapping]]] = ..., removed_server_ids: _Optional[_Iterable[str]] = ..., strategy: _Optional[str] = ..., strategy_params_json: _Optional[str] = ..., learned_json: _Optional[str] = ..., consecutive_failures: _Optional[int] = ..., base_ejection_time_ms: _Optional[int] = ..., panic_threshold_percent: _Optional[int] = ..., panic: _Optional[bool] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted: _Optional[bool] = ..., in_flight_seq: _Optional[int] = ...) -> None: ...

class RouteServer(_message.Message):
    __slots__ = ("id", "address", "weight", "effective_weight", "state", "eligible", "load", "load_reported_at", "in_flight", "ewma_latency_ms", "error_rate", "outcomes_total", "ejected_until")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LOAD_REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    EWMA_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EJECTED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    weight: int
    effective_weight: float
    state: _common_pb2.ServerState
    eligible: bool
    load: _common_pb2.LoadReport
    load_reported_at: _timestamp_pb2.Timestamp
    in_flight: int
    ewma_latency_ms: float
    error_rate: float
    outcomes_total: int
    ejected_until: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ..., weight: _Optional[int] = ..., effective_weight: _Optional[float] = ..., state: _Optional[_Union[_common_pb2.ServerState, str]] = ..., eligible: _Optional[bool] = ..., load: _Optional[_Union[_common_pb2.LoadReport, _Mapping]] = ..., load_reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., in_flight: _Optional[int] = ..., ewma_latency_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., outcomes_total: _Optional[int] = ..., ejected_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[DecideCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[DecideCall, _Mapping]]] = ...) -> None: ...

class DecideCall(_message.Message):
    __slots__ = ("id", "timeout_ms", "select", "acquire", "release", "report_outcome")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    id: int
    timeout_ms: int
    select: SelectServerRequest
    acquire: AcquireSlotRequest
    release: ReleaseSlotRequest
    report_outcome: ReportOutcomeRequest
    def __init__(self, id: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., select: _Optional[_Union[SelectServerRequest, _Mapping]] = ..., acquire: _Optional[_Union[AcquireSlotRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseSlotRequest, _Mapping]] = ..., report_outcome: _Optional[_Union[ReportOutcomeRequest, _Mapping]] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[DecideAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[DecideAnswer, _Mapping]]] = ...) -> None: ...

class DecideAnswer(_message.Message):
    __slots__ = ("id", "select", "acquire", "release", "report_outcome", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    REPORT_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    select: SelectServerResponse
    acquire: AcquireSlotResponse
    release: ReleaseSlotResponse
    report_outcome: ReportOutcomeResponse
    error: DecideError
    def __init__(self, id: _Optional[int] = ..., select: _Optional[_Union[SelectServerResponse, _Mapping]] = ..., acquire: _Optional[_Union[AcquireSlotResponse, _Mapping]] = ..., release: _Optional[_Union[ReleaseSlotResponse, _Mapping]] = ..., report_outcome: _Optional[_Union[ReportOutcomeResponse, _Mapping]] = ..., error: _Optional[_Union[DecideError, _Mapping]] = ...) -> None: ...

class DecideError(_message.Message):
    __slots__ = ("code", "message", "retry_after_ms", "unavailable_reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_after_ms: int
    unavailable_reason: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ..., unavailable_reason: _Optional[str] = ...) -> None: ...

class Allotment(_message.Message):
    __slots__ = ("allotment_id", "pool", "slots", "ttl_ms", "expires_at")
    ALLOTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    allotment_id: str
    pool: str
    slots: int
    ttl_ms: int
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, allotment_id: _Optional[str] = ..., pool: _Optional[str] = ..., slots: _Optional[int] = ..., ttl_ms: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AcquireAllotmentRequest(_message.Message):
    __slots__ = ("pool", "slots", "ttl_ms")
    POOL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    pool: str
    slots: int
    ttl_ms: int
    def __init__(self, pool: _Optional[str] = ..., slots: _Optional[int] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class AcquireAllotmentResponse(_message.Message):
    __slots__ = ("allotment", "retry_after_ms")
    ALLOTMENT_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    allotment: Allotment
    retry_after_ms: int
    def __init__(self, allotment: _Optional[_Union[Allotment, _Mapping]] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class RenewAllotmentRequest(_message.Message):
    __slots__ = ("allotment_id", "ttl_ms", "slots")
    ALLOTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    allotment_id: str
    ttl_ms: int
    slots: int
    def __init__(self, allotment_id: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., slots: _Optional[int] = ...) -> None: ...

class RenewAllotmentResponse(_message.Message):
    __slots__ = ("allotment",)
    ALLOTMENT_FIELD_NUMBER: _ClassVar[int]
    allotment: Allotment
    def __init__(self, allotment: _Optional[_Union[Allotment, _Mapping]] = ...) -> None: ...

class ReleaseAllotmentRequest(_message.Message):
    __slots__ = ("allotment_id",)
    ALLOTMENT_ID_FIELD_NUMBER: _ClassVar[int]
    allotment_id: str
    def __init__(self, allotment_id: _Optional[str] = ...) -> None: ...

class ReleaseAllotmentResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...

class GetRecommendationsRequest(_message.Message):
    __slots__ = ("pools", "horizon_s", "include_operations")
    POOLS_FIELD_NUMBER: _ClassVar[int]
    HORIZON_S_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    pools: _containers.RepeatedScalarFieldContainer[str]
    horizon_s: int
    include_operations: bool
    def __init__(self, pools: _Optional[_Iterable[str]] = ..., horizon_s: _Optional[int] = ..., include_operations: _Optional[bool] = ...) -> None: ...

class GetRecommendationsResponse(_message.Message):
    __slots__ = ("recommendations", "operations", "interval_s")
    RECOMMENDATIONS_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    recommendations: _containers.RepeatedCompositeFieldContainer[_planning_pb2.Recommendation]
    operations: _containers.RepeatedCompositeFieldContainer[_planning_pb2.OperationForecasts]
    interval_s: float
    def __init__(self, recommendations: _Optional[_Iterable[_Union[_planning_pb2.Recommendation, _Mapping]]] = ..., operations: _Optional[_Iterable[_Union[_planning_pb2.OperationForecasts, _Mapping]]] = ..., interval_s: _Optional[float] = ...) -> None: ...
