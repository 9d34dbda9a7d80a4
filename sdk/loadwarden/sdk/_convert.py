"""Translation between the SDK's types and the generated protobuf messages.

Shared by `Client` and `AsyncClient`: neither builds or reads a message itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from loadwarden.sdk._types import (
    BatchAdjustment,
    BatchMode,
    LoadReport,
    LoadStatus,
    OperationStatus,
    PoolStatus,
    Selection,
    ServerState,
    ServerStatus,
)
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

# Entries one ReportOutcome / ReportLoad request may carry (the contract's limit).
MAX_REPORTS_PER_REQUEST = 1000
# Longest latency an outcome may carry, milliseconds (one day).
MAX_LATENCY_MS = 86_400_000
# Longest outcome status detail, characters.
MAX_STATUS_LEN = 64

_SERVER_STATE_BY_PROTO: dict[int, ServerState] = {
    _common.SERVER_STATE_UNSPECIFIED: ServerState.UNSPECIFIED,
    _common.SERVER_STATE_SERVING: ServerState.SERVING,
    _common.SERVER_STATE_STALE: ServerState.STALE,
    _common.SERVER_STATE_DRAINING: ServerState.DRAINING,
    _common.SERVER_STATE_EJECTED: ServerState.EJECTED,
}

_BATCH_MODE_BY_PROTO: dict[int, BatchMode] = {
    _common.BATCH_MODE_UNSPECIFIED: BatchMode.UNSPECIFIED,
    _common.BATCH_MODE_THRESHOLD: BatchMode.THRESHOLD,
    _common.BATCH_MODE_LATENCY_TARGET: BatchMode.LATENCY_TARGET,
}


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
        raise ValueError("decision_id must be a non-empty string")
    if not (isinstance(latency_ms, int | float) and 0 <= latency_ms <= MAX_LATENCY_MS):
        raise ValueError(f"latency_ms must be between 0 and {MAX_LATENCY_MS}, got {latency_ms!r}")
    check_status(status)
    return _pb.Outcome(decision_id=decision_id, success=bool(success), latency_ms=latency_ms, status=status)


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


def load_status_request(pool: str | None) -> _pb.GetLoadStatusRequest:
    return _pb.GetLoadStatusRequest(pool=pool or "")


def load_report_to_proto(report: LoadReport) -> _common.LoadReport:
    return _common.LoadReport(
        pool=report.pool,
        server_id=report.server_id,
        cpu_percent=report.cpu_percent,
        memory_percent=report.memory_percent,
        active_requests=report.active_requests,
        mean_latency_ms=report.mean_latency_ms,
        error_rate=report.error_rate,
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
    )


def load_status_from_proto(message: _common.LoadStatus) -> LoadStatus:
    return LoadStatus(
        generated_at=_datetime(message.generated_at),
        pools=tuple(pool_status_from_proto(pool) for pool in message.pools),
        pending_decisions=message.pending_decisions,
        operations=tuple(operation_status_from_proto(operation) for operation in message.operations),
    )


def _datetime(timestamp: Timestamp) -> datetime:
    # Always timezone-aware UTC; an unset Timestamp reads as the Unix epoch.
    return timestamp.ToDatetime(tzinfo=UTC)
