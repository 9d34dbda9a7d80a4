"""Protobuf <-> SDK type conversions."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from loadwarden.sdk import (
    BatchAdjustment,
    BatchMode,
    BatchReport,
    BatchSize,
    HostLoad,
    LoadReport,
    LoadSource,
    LoadStatus,
    OperationStatus,
    PoolStatus,
    Selection,
    ServerState,
    ServerStatus,
)
from loadwarden.sdk._convert import (
    batch_size_from_proto,
    load_report_from_proto,
    load_report_to_proto,
    load_status_from_proto,
    load_status_request,
    outcome_to_proto,
    report_batch_request,
    report_load_request,
    select_request,
    selection_from_proto,
)
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

AT = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


def _timestamp(at: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(at)
    return timestamp


def test_selection_from_response() -> None:
    response = _pb.SelectServerResponse(
        decision_id="d-1", server_id="s1", address="10.0.0.1:80", strategy="q_learning", explored=True
    )

    assert selection_from_proto(response) == Selection(
        decision_id="d-1", server_id="s1", address="10.0.0.1:80", strategy="q_learning", explored=True, fallback=False
    )


def test_load_report_round_trip() -> None:
    report = LoadReport(
        "api", "s1", cpu_percent=42.5, memory_percent=60.0, active_requests=7, mean_latency_ms=12.5, error_rate=0.01
    )

    assert load_report_from_proto(load_report_to_proto(report)) == report


def test_load_status_from_proto() -> None:
    message = _common.LoadStatus(
        generated_at=_timestamp(AT),
        pending_decisions=3,
        pools=[
            _common.PoolStatus(
                name="api",
                strategy="least_connections",
                eligible_servers=1,
                in_flight=2,
                active_leases=4,
                queue_length=5,
                concurrency_limit=10,
                servers=[
                    _common.ServerStatus(
                        id="s1",
                        address="10.0.0.1:80",
                        weight=2,
                        state=_common.SERVER_STATE_SERVING,
                        in_flight=2,
                        load=_common.LoadReport(pool="api", server_id="s1", cpu_percent=50.0, active_requests=3),
                        load_reported_at=_timestamp(AT),
                        ewma_latency_ms=8.5,
                        error_rate=0.25,
                        selections_total=99,
                    ),
                    _common.ServerStatus(id="s2", address="10.0.0.2:80", weight=1, state=_common.SERVER_STATE_STALE),
                ],
            )
        ],
        operations=[
            _common.OperationStatus(
                name="import",
                batch_size=50,
                last_load_score=62.0,
                adjustments_total=1,
                mode=_common.BATCH_MODE_THRESHOLD,
                recent_adjustments=[
                    _common.BatchAdjustment(
                        at=_timestamp(AT), previous_size=100, new_size=50, reason="load", load_score=85.0
                    )
                ],
            )
        ],
    )

    status = load_status_from_proto(message)

    assert status == LoadStatus(
        generated_at=AT,
        pending_decisions=3,
        pools=(
            PoolStatus(
                name="api",
                strategy="least_connections",
                eligible_servers=1,
                in_flight=2,
                active_leases=4,
                queue_length=5,
                concurrency_limit=10,
                servers=(
                    ServerStatus(
                        id="s1",
                        address="10.0.0.1:80",
                        weight=2,
                        state=ServerState.SERVING,
                        in_flight=2,
                        load=LoadReport("api", "s1", cpu_percent=50.0, active_requests=3),
                        load_reported_at=AT,
                        ewma_latency_ms=8.5,
                        error_rate=0.25,
                        selections_total=99,
                    ),
                    ServerStatus(
                        id="s2",
                        address="10.0.0.2:80",
                        weight=1,
                        state=ServerState.STALE,
                        in_flight=0,
                        load=None,
                        load_reported_at=None,
                        ewma_latency_ms=0.0,
                        error_rate=0.0,
                        selections_total=0,
                    ),
                ),
            ),
        ),
        operations=(
            OperationStatus(
                name="import",
                batch_size=50,
                last_load_score=62.0,
                adjustments_total=1,
                mode=BatchMode.THRESHOLD,
                recent_adjustments=(
                    BatchAdjustment(at=AT, previous_size=100, new_size=50, reason="load", load_score=85.0),
                ),
            ),
        ),
    )


def test_a_server_state_this_sdk_does_not_know_reads_as_unspecified() -> None:
    message = _common.ServerStatus(id="s1", state=99)  # type: ignore[arg-type]  # an unknown value on purpose

    status = load_status_from_proto(_common.LoadStatus(pools=[_common.PoolStatus(servers=[message])]))

    assert status.pools[0].servers[0].state is ServerState.UNSPECIFIED


@pytest.mark.parametrize("pool", [None, ""])
def test_no_pool_asks_for_everything(pool: str | None) -> None:
    assert load_status_request(pool) == _pb.GetLoadStatusRequest(pool="")


def test_select_request_carries_excluded_ids() -> None:
    assert select_request("api", ("s1", "s2")) == _pb.SelectServerRequest(pool="api", exclude_server_ids=["s1", "s2"])


def test_select_request_refuses_a_single_string_as_exclude() -> None:
    with pytest.raises(TypeError, match="exclude"):
        select_request("api", "s1")


def test_report_load_request_refuses_more_than_one_batch() -> None:
    with pytest.raises(ValueError, match="reports"):
        report_load_request([LoadReport("api", f"s{i}") for i in range(1001)])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"decision_id": ""}, "decision_id"),
        ({"latency_ms": -1.0}, "latency_ms"),
        ({"latency_ms": math.nan}, "latency_ms"),
        ({"latency_ms": 86_400_001}, "latency_ms"),
        ({"status": "x" * 65}, "status"),
        ({"status": "bad\nstatus"}, "status"),
        ({"status": "é"}, "status"),
    ],
)
def test_outcome_fields_that_would_poison_a_batch_are_refused(kwargs: dict, name: str) -> None:
    fields = {"decision_id": "d-1", "success": True, "latency_ms": 1.0, "status": ""} | kwargs
    decision_id = fields.pop("decision_id")

    with pytest.raises(ValueError, match=name):
        outcome_to_proto(decision_id, **fields)


def test_operation_status_carries_its_settings_and_adjustments() -> None:
    message = _common.LoadStatus(
        operations=[
            _common.OperationStatus(
                name="ingest",
                batch_size=27,
                last_load_score=0.0,
                adjustments_total=2,
                recent_adjustments=[
                    _common.BatchAdjustment(at=_timestamp(AT), previous_size=20, new_size=30, reason="under target"),
                    _common.BatchAdjustment(at=_timestamp(AT), previous_size=30, new_size=27, reason="breach: x0.9"),
                ],
                mode=_common.BATCH_MODE_LATENCY_TARGET,
                load_source=_common.LOAD_SOURCE_POOL,
                pool="api",
                min_batch_size=1,
                max_batch_size=100,
                default_batch_size=20,
                last_reason="breach: x0.9",
                fallback=True,
                decisions_total=9,
            )
        ]
    )

    [operation] = load_status_from_proto(message).operations

    assert operation == OperationStatus(
        name="ingest",
        batch_size=27,
        last_load_score=0.0,
        adjustments_total=2,
        recent_adjustments=(
            BatchAdjustment(at=AT, previous_size=20, new_size=30, reason="under target", load_score=0.0),
            BatchAdjustment(at=AT, previous_size=30, new_size=27, reason="breach: x0.9", load_score=0.0),
        ),
        mode=BatchMode.LATENCY_TARGET,
        load_source=LoadSource.POOL,
        pool="api",
        min_batch_size=1,
        max_batch_size=100,
        default_batch_size=20,
        last_reason="breach: x0.9",
        fallback=True,
        decisions_total=9,
    )


def test_operation_enums_this_sdk_does_not_know_read_as_unspecified() -> None:
    unknown = _common.OperationStatus(name="x", mode=99, load_source=99)  # type: ignore[arg-type]  # unknown values on purpose
    message = _common.LoadStatus(operations=[unknown])

    [operation] = load_status_from_proto(message).operations

    assert (operation.mode, operation.load_source) == (BatchMode.UNSPECIFIED, LoadSource.UNSPECIFIED)


def test_host_load_comes_through() -> None:
    message = _common.LoadStatus(
        host=_common.HostLoad(
            cpu_percent=40.0, memory_percent=60.0, load_average_percent=20.0, load_score=40.0, sampled_at=_timestamp(AT)
        )
    )

    assert load_status_from_proto(message).host == HostLoad(
        cpu_percent=40.0,
        memory_percent=60.0,
        load_average_percent=20.0,
        load_score=40.0,
        sampled_at=AT,
        stale=False,
        problem="",
    )


def test_a_stale_host_load_has_no_score_and_an_unsampled_one_no_time() -> None:
    message = _common.LoadStatus(host=_common.HostLoad(stale=True, problem="psutil failed"))

    host = load_status_from_proto(message).host

    assert host is not None
    assert (host.load_score, host.sampled_at, host.stale, host.problem) == (None, None, True, "psutil failed")


def test_no_host_when_the_monitor_is_off() -> None:
    assert load_status_from_proto(_common.LoadStatus()).host is None


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (_common.LOAD_LEVEL_LOW, "low"),
        (_common.LOAD_LEVEL_MEDIUM, "medium"),
        (_common.LOAD_LEVEL_HIGH, "high"),
    ],
)
def test_batch_size_with_a_known_load(level: _common.LoadLevel, expected: str) -> None:
    response = _pb.GetBatchSizeResponse(
        decision_id="d-1", batch_size=60, load_score=62.0, load_level=level, reason="between"
    )

    assert batch_size_from_proto(response) == BatchSize(
        size=60,
        load_score=62.0,
        load_level=expected,
        reason="between",
        fallback=False,
        decision_id="d-1",
        source="service",
    )


@pytest.mark.parametrize("level", [_common.LOAD_LEVEL_UNKNOWN, _common.LOAD_LEVEL_UNSPECIFIED, 99])
def test_batch_size_with_an_unknown_load_has_no_score(level: _common.LoadLevel) -> None:
    response = _pb.GetBatchSizeResponse(batch_size=10, load_score=0.0, load_level=level, fallback=True)

    answer = batch_size_from_proto(response)

    assert (answer.load_score, answer.load_level, answer.fallback) == (None, "unknown", True)


def test_batch_report_to_proto() -> None:
    report = BatchReport("import", batch_size=5, duration_ms=12, success=False, decision_id="d")

    request = report_batch_request([report])

    assert request == _pb.ReportBatchRequest(
        reports=[_pb.BatchReport(operation="import", batch_size=5, duration_ms=12.0, success=False, decision_id="d")]
    )
