"""Protobuf <-> SDK type conversions."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from loadwarden.sdk import (
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
from loadwarden.sdk._convert import (
    load_report_from_proto,
    load_report_to_proto,
    load_status_from_proto,
    load_status_request,
    outcome_to_proto,
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
    message = _common.ServerStatus(id="s1", state=99)

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
