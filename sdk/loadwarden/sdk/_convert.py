"""Translation between the SDK's types and the generated protobuf messages.

Shared by `Client` and `AsyncClient`: neither builds or reads a message itself.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from loadwarden.sdk._errors import ServiceError, SlotDenied
from loadwarden.sdk._types import (
    MAX_BATCH_SIZE,
    BatchAdjustment,
    BatchMode,
    BatchReport,
    BatchSize,
    HealthCheckStatus,
    HostLoad,
    Lease,
    LoadReport,
    LoadSource,
    LoadStatus,
    OperationStatus,
    PoolStatus,
    Selection,
    ServerState,
    ServerStatus,
)
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

# Entries one ReportOutcome / ReportLoad / ReportBatch request may carry (the contract's limit).
MAX_REPORTS_PER_REQUEST = 1000
# Longest latency an outcome may carry, milliseconds (one day).
MAX_LATENCY_MS = 86_400_000
# Longest outcome status detail, characters.
MAX_STATUS_LEN = 64
# Highest AcquireSlot priority (0 is the lowest).
MAX_PRIORITY = 9
# Longest wait for a slot the contract allows (a pool's max_wait_ms may be lower), seconds.
MAX_WAIT_S = 3600.0
# Lease TTL bounds, seconds.
MIN_LEASE_TTL_S = 0.1
MAX_LEASE_TTL_S = 86_400.0
# Longest request id, characters.
MAX_REQUEST_ID_LEN = 128

_DENIAL_PREFIX = "DENIAL_REASON_"
# "AT_CAPACITY", ... from the generated enum, so a new contract value needs no SDK change here.
_DENIAL_BY_PROTO: dict[int, str] = {
    value.number: value.name.removeprefix(_DENIAL_PREFIX)
    for value in _pb.DESCRIPTOR.enum_types_by_name["DenialReason"].values
}

_SERVER_STATE_BY_PROTO: dict[int, ServerState] = {
    _common.SERVER_STATE_UNSPECIFIED: ServerState.UNSPECIFIED,
    _common.SERVER_STATE_SERVING: ServerState.SERVING,
    _common.SERVER_STATE_STALE: ServerState.STALE,
    _common.SERVER_STATE_DRAINING: ServerState.DRAINING,
    _common.SERVER_STATE_EJECTED: ServerState.EJECTED,
    _common.SERVER_STATE_UNHEALTHY: ServerState.UNHEALTHY,
    _common.SERVER_STATE_DEGRADED: ServerState.DEGRADED,
}

_BATCH_MODE_BY_PROTO: dict[int, BatchMode] = {
    _common.BATCH_MODE_UNSPECIFIED: BatchMode.UNSPECIFIED,
    _common.BATCH_MODE_THRESHOLD: BatchMode.THRESHOLD,
    _common.BATCH_MODE_LATENCY_TARGET: BatchMode.LATENCY_TARGET,
}

_LOAD_SOURCE_BY_PROTO: dict[int, LoadSource] = {
    _common.LOAD_SOURCE_UNSPECIFIED: LoadSource.UNSPECIFIED,
    _common.LOAD_SOURCE_HOST: LoadSource.HOST,
    _common.LOAD_SOURCE_POOL: LoadSource.POOL,
}

# `BatchSize.load_level`; UNSPECIFIED and values this SDK version does not know read as "unknown".
_LOAD_LEVEL_BY_PROTO: dict[int, str] = {
    _common.LOAD_LEVEL_LOW: "low",
    _common.LOAD_LEVEL_MEDIUM: "medium",
    _common.LOAD_LEVEL_HIGH: "high",
}
_UNKNOWN_LEVEL = "unknown"


def select_request(pool: str, exclude: Iterable[str]) -> _pb.SelectServerRequest:
    """Builds a SelectServer request; `exclude` must be ids, not one id string."""
    if isinstance(exclude, str | bytes):
        raise TypeError("exclude must be an iterable of server ids, not a single string")
    return _pb.SelectServerRequest(pool=pool, exclude_server_ids=list(exclude))


def selection_from_proto(response: _pb.SelectServerResponse) -> Selection:
    return Selection(
        decision_id=response.decision_id,
        server_id=response.server_id,
        address=response.address,
        strategy=response.strategy,
        explored=response.explored,
    )


def outcome_to_proto(decision_id: str, *, success: bool, latency_ms: float, status: str) -> _pb.Outcome:
    """Builds one outcome, checked here because one bad entry would make the service reject its whole batch."""
    if not isinstance(decision_id, str) or not decision_id:
        raise ValueError(
            "decision_id must be a non-empty string (Selection.decision_id, or the Selection itself), "
            f"got {decision_id!r}"
        )
    check_outcome(latency_ms=latency_ms, status=status)
    return _pb.Outcome(decision_id=decision_id, success=bool(success), latency_ms=latency_ms, status=status)


def check_outcome(*, latency_ms: float, status: str) -> None:
    """Raises ValueError unless an outcome's latency and status are what the contract allows."""
    if not (isinstance(latency_ms, int | float) and 0 <= latency_ms <= MAX_LATENCY_MS):
        raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}, got {latency_ms!r}")
    check_status(status)


def check_status(status: str) -> None:
    """Raises ValueError unless `status` is at most 64 printable ASCII characters."""
    if not (isinstance(status, str) and len(status) <= MAX_STATUS_LEN and status.isascii() and status.isprintable()):
        raise ValueError(f"status must be at most {MAX_STATUS_LEN} printable ASCII characters, got {status!r}")


def report_outcome_request(outcomes: Iterable[_pb.Outcome]) -> _pb.ReportOutcomeRequest:
    return _pb.ReportOutcomeRequest(outcomes=outcomes)


def report_load_request(reports: Iterable[LoadReport]) -> _pb.ReportLoadRequest:
    """Builds one ReportLoad request; raises ValueError above the contract's 1,000 reports."""
    messages = [load_report_to_proto(report) for report in reports]
    if len(messages) > MAX_REPORTS_PER_REQUEST:
        raise ValueError(
            f"reports: at most {MAX_REPORTS_PER_REQUEST} per call (validated as one batch), got {len(messages)}"
        )
    return _pb.ReportLoadRequest(reports=messages)


# GetLoadStatus pages read at most for one load_status() (10,000 servers a page: 10 M servers).
MAX_STATUS_PAGES = 1_000


def load_status_request(pool: str | None, page_token: str = "") -> _pb.GetLoadStatusRequest:
    return _pb.GetLoadStatusRequest(pool=pool or "", page_token=page_token)


def merge_status_pages(pages: list[_common.LoadStatus]) -> _common.LoadStatus:
    """One snapshot from GetLoadStatus pages: a pool split over pages keeps the first
    page's counts and all its servers; operations are appended in page order."""
    merged = _common.LoadStatus()
    merged.CopyFrom(pages[0])
    by_name = {pool.name: pool for pool in merged.pools}
    for page in pages[1:]:
        for pool in page.pools:
            known = by_name.get(pool.name)
            if known is None:
                known = by_name[pool.name] = merged.pools.add()
                known.CopyFrom(pool)
            else:
                known.servers.extend(pool.servers)
        merged.operations.extend(page.operations)
    return merged


def load_report_to_proto(report: LoadReport) -> _common.LoadReport:
    return _common.LoadReport(
        pool=report.pool,
        server_id=report.server_id,
        cpu_percent=report.cpu_percent,
        memory_percent=report.memory_percent,
        active_requests=report.active_requests,
        mean_latency_ms=report.mean_latency_ms,
        error_rate=report.error_rate,
        application_utilization=report.application_utilization,
        requests_per_second=report.requests_per_second,
        errors_per_second=report.errors_per_second,
        named_metrics=report.named_metrics,
    )


def load_report_from_proto(message: _common.LoadReport) -> LoadReport:
    return LoadReport(
        pool=message.pool,
        server_id=message.server_id,
        cpu_percent=message.cpu_percent,
        memory_percent=message.memory_percent,
        active_requests=message.active_requests,
        mean_latency_ms=message.mean_latency_ms,
        error_rate=message.error_rate,
        application_utilization=message.application_utilization,
        requests_per_second=message.requests_per_second,
        errors_per_second=message.errors_per_second,
        named_metrics=dict(message.named_metrics),
    )


def server_status_from_proto(message: _common.ServerStatus) -> ServerStatus:
    return ServerStatus(
        id=message.id,
        address=message.address,
        weight=message.weight,
        state=_SERVER_STATE_BY_PROTO.get(message.state, ServerState.UNSPECIFIED),
        in_flight=message.in_flight,
        load=load_report_from_proto(message.load) if message.HasField("load") else None,
        load_reported_at=_datetime(message.load_reported_at) if message.HasField("load_reported_at") else None,
        ewma_latency_ms=message.ewma_latency_ms,
        error_rate=message.error_rate,
        selections_total=message.selections_total,
        ejections_total=message.ejections_total,
        ejected_until=_datetime(message.ejected_until) if message.HasField("ejected_until") else None,
        effective_weight=message.effective_weight,
        consecutive_failures=message.consecutive_failures,
        health_check=health_check_from_proto(message.health_check) if message.HasField("health_check") else None,
    )


def health_check_from_proto(message: _common.HealthCheckStatus) -> HealthCheckStatus:
    return HealthCheckStatus(
        state=message.state,
        checked_at=_datetime(message.checked_at) if message.HasField("checked_at") else None,
        latency_ms=message.latency_ms,
        problem=message.problem,
        consecutive_failures=message.consecutive_failures,
        consecutive_successes=message.consecutive_successes,
        checks_total=message.checks_total,
    )


def pool_status_from_proto(message: _common.PoolStatus) -> PoolStatus:
    return PoolStatus(
        name=message.name,
        strategy=message.strategy,
        servers=tuple(server_status_from_proto(server) for server in message.servers),
        eligible_servers=message.eligible_servers,
        in_flight=message.in_flight,
        active_leases=message.active_leases,
        queue_length=message.queue_length,
        concurrency_limit=message.concurrency_limit,
        strategy_stats=dict(message.strategy_stats),
        panic=message.panic,
        requests_total=message.requests_total,
    )


def operation_status_from_proto(message: _common.OperationStatus) -> OperationStatus:
    return OperationStatus(
        name=message.name,
        batch_size=message.batch_size,
        last_load_score=message.last_load_score,
        adjustments_total=message.adjustments_total,
        recent_adjustments=tuple(
            BatchAdjustment(
                at=_datetime(adjustment.at),
                previous_size=adjustment.previous_size,
                new_size=adjustment.new_size,
                reason=adjustment.reason,
                load_score=adjustment.load_score,
            )
            for adjustment in message.recent_adjustments
        ),
        mode=_BATCH_MODE_BY_PROTO.get(message.mode, BatchMode.UNSPECIFIED),
        load_source=_LOAD_SOURCE_BY_PROTO.get(message.load_source, LoadSource.UNSPECIFIED),
        pool=message.pool,
        min_batch_size=message.min_batch_size,
        max_batch_size=message.max_batch_size,
        default_batch_size=message.default_batch_size,
        last_reason=message.last_reason,
        fallback=message.fallback,
        decisions_total=message.decisions_total,
    )


def host_load_from_proto(message: _common.HostLoad) -> HostLoad:
    return HostLoad(
        cpu_percent=message.cpu_percent,
        memory_percent=message.memory_percent,
        load_average_percent=message.load_average_percent,
        # A stale score reads 0 on the wire; unknown must never look idle.
        load_score=None if message.stale else message.load_score,
        sampled_at=_datetime(message.sampled_at) if message.HasField("sampled_at") else None,
        stale=message.stale,
        problem=message.problem,
    )


def load_status_from_proto(message: _common.LoadStatus) -> LoadStatus:
    return LoadStatus(
        generated_at=_datetime(message.generated_at),
        pools=tuple(pool_status_from_proto(pool) for pool in message.pools),
        pending_decisions=message.pending_decisions,
        operations=tuple(operation_status_from_proto(operation) for operation in message.operations),
        host=host_load_from_proto(message.host) if message.HasField("host") else None,
    )


def batch_size_request(operation: str) -> _pb.GetBatchSizeRequest:
    # The name's characters are the service's to check: it answers INVALID_ARGUMENT naming the field.
    return _pb.GetBatchSizeRequest(operation=operation)


def check_default_batch_size(default: int | None) -> None:
    """Raises ValueError unless `default` is None or a batch size the contract allows."""
    if default is not None and (
        isinstance(default, bool) or not isinstance(default, int) or not 1 <= default <= MAX_BATCH_SIZE
    ):
        raise ValueError(f"default must be None or an integer 1-{MAX_BATCH_SIZE:,}, got {default!r}")


def batch_size_from_proto(response: _pb.GetBatchSizeResponse) -> BatchSize:
    level = _LOAD_LEVEL_BY_PROTO.get(response.load_level, _UNKNOWN_LEVEL)
    return BatchSize(
        size=response.batch_size,
        # The wire's 0 for an unknown load is not a load score.
        load_score=None if level == _UNKNOWN_LEVEL else response.load_score,
        load_level=level,
        reason=response.reason,
        fallback=response.fallback,
        decision_id=response.decision_id,
        source="service",
    )


def batch_report_to_proto(report: BatchReport) -> _pb.BatchReport:
    if not isinstance(report, BatchReport):
        raise TypeError(f"reports must hold BatchReport values, got {type(report).__name__}")
    return _pb.BatchReport(
        operation=report.operation,
        decision_id=report.decision_id,
        batch_size=report.batch_size,
        duration_ms=report.duration_ms,
        success=bool(report.success),
    )


def report_batch_request(reports: Iterable[BatchReport]) -> _pb.ReportBatchRequest:
    """Builds one ReportBatch request; raises ValueError above the contract's 1,000 reports."""
    if isinstance(reports, BatchReport):
        raise TypeError("reports must be an iterable of BatchReport, not a single one")
    messages = [batch_report_to_proto(report) for report in reports]
    if len(messages) > MAX_REPORTS_PER_REQUEST:
        raise ValueError(
            f"reports: at most {MAX_REPORTS_PER_REQUEST} per call (validated as one batch), got {len(messages)}"
        )
    return _pb.ReportBatchRequest(reports=messages)


def new_request_id() -> str:
    """A fresh idempotency key: 32 hex characters, unique per call."""
    return uuid.uuid4().hex


def acquire_slot_request(
    pool: str,
    *,
    request_id: str,
    priority: int,
    wait_s: float,
    lease_ttl_s: float | None,
    client_key: str,
    select_server: bool,
) -> _pb.AcquireSlotRequest:
    """Builds an AcquireSlot request; raises ValueError naming an out-of-range argument."""
    _check_request_id(request_id)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise ValueError(f"priority must be an integer 0-{MAX_PRIORITY}, got {priority!r}")
    if not (_is_number(wait_s) and 0 <= wait_s <= MAX_WAIT_S):
        raise ValueError(f"wait_s must be 0-{MAX_WAIT_S:g} seconds, got {wait_s!r}")
    if lease_ttl_s is not None and not (_is_number(lease_ttl_s) and MIN_LEASE_TTL_S <= lease_ttl_s <= MAX_LEASE_TTL_S):
        raise ValueError(
            f"lease_ttl_s must be None or {MIN_LEASE_TTL_S:g}-{MAX_LEASE_TTL_S:g} seconds, got {lease_ttl_s!r}"
        )
    if not isinstance(client_key, str):
        raise ValueError(f"client_key must be a string, got {client_key!r}")
    return _pb.AcquireSlotRequest(
        pool=pool,
        request_id=request_id,
        priority=priority,
        max_wait_ms=round(wait_s * 1000),
        lease_ttl_ms=0 if lease_ttl_s is None else round(lease_ttl_s * 1000),
        client_key=client_key,
        select_server=bool(select_server),
    )


def _check_request_id(request_id: str) -> None:
    # Its characters (name rules) are the service's to check: it answers INVALID_ARGUMENT naming the field.
    if not (isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_LEN):
        raise ValueError(f"request_id must be a string of at most {MAX_REQUEST_ID_LEN} characters, got {request_id!r}")


def acquired_lease(response: _pb.AcquireSlotResponse, pool: str) -> Lease:
    """The lease an AcquireSlot answer granted.

    Args:
        response: The service's answer.
        pool: Pool asked for (named in a denial).

    Raises:
        SlotDenied: The answer is a denial (`granted` false).
        ServiceError: The answer grants a slot but carries no lease.
    """
    if not response.granted:
        raise SlotDenied(
            response.reason,
            denial=_DENIAL_BY_PROTO.get(response.denial_reason, "UNSPECIFIED"),
            # 0 is proto3's "unset": no hint.
            retry_after_s=response.retry_after_ms / 1000 if response.retry_after_ms else None,
            pool=pool,
            decision_id=response.decision_id,
            queue_wait_s=response.queue_wait_ms / 1000,
        )
    if not response.lease.lease_id:
        raise ServiceError(f"AcquireSlot granted a slot in pool {pool!r} without a lease id")
    return Lease(
        lease_id=response.lease.lease_id,
        pool=response.lease.pool or pool,
        ttl_s=response.lease.ttl_ms / 1000,
        expires_at=_datetime(response.lease.expires_at),
        server_id=response.server_id or None,
        address=response.address or None,
        decision_id=response.decision_id,
        queue_wait_s=response.queue_wait_ms / 1000,
    )


def renew_lease_request(lease_id: str, ttl_s: float | None) -> _pb.RenewLeaseRequest:
    """Builds a RenewLease request; `ttl_s` None keeps the lease's current TTL."""
    _check_lease_id(lease_id)
    if ttl_s is not None and not (_is_number(ttl_s) and MIN_LEASE_TTL_S <= ttl_s <= MAX_LEASE_TTL_S):
        raise ValueError(f"ttl_s must be None or {MIN_LEASE_TTL_S:g}-{MAX_LEASE_TTL_S:g} seconds, got {ttl_s!r}")
    return _pb.RenewLeaseRequest(lease_id=lease_id, ttl_ms=0 if ttl_s is None else round(ttl_s * 1000))


def renewed_lease(response: _pb.RenewLeaseResponse) -> Lease:
    """The lease a RenewLease answer carries; the grant-time fields (server, decision) are not in it."""
    return Lease(
        lease_id=response.lease.lease_id,
        pool=response.lease.pool,
        ttl_s=response.lease.ttl_ms / 1000,
        expires_at=_datetime(response.lease.expires_at),
        server_id=None,
        address=None,
        decision_id="",
        queue_wait_s=0.0,
    )


def release_slot_request(lease_id: str, *, request_id: str, success: bool, latency_ms: float) -> _pb.ReleaseSlotRequest:
    """Builds a ReleaseSlot request; raises ValueError naming an out-of-range argument."""
    _check_lease_id(lease_id)
    _check_request_id(request_id)
    if not (_is_number(latency_ms) and 0 <= latency_ms <= MAX_LATENCY_MS):
        raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}, got {latency_ms!r}")
    return _pb.ReleaseSlotRequest(
        lease_id=lease_id, request_id=request_id, success=bool(success), latency_ms=latency_ms
    )


def abandon_request(pool: str, request_ids: list[str]) -> _pb.ReleaseSlotRequest:
    """Builds a ReleaseSlot request that ends these AcquireSlot calls in `pool` as never granted."""
    return _pb.ReleaseSlotRequest(pool=pool, abandoned_request_ids=request_ids)


def _check_lease_id(lease_id: str) -> None:
    if not isinstance(lease_id, str) or not lease_id:
        raise ValueError(f"lease_id must be a non-empty string, got {lease_id!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _datetime(timestamp: Timestamp) -> datetime:
    # Always timezone-aware UTC; an unset Timestamp reads as the Unix epoch.
    return timestamp.ToDatetime(tzinfo=UTC)
