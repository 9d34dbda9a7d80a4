"""ORCA ingestion without sockets: what an OrcaLoadReport says as a load sample, what is
refused, which servers a stream may go to, the settings, and ReportLoad's new fields."""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import pytest
from xds.data.orca.v3 import orca_load_report_pb2 as orca_pb  # type: ignore[import-untyped]  # xds-protos: no stubs

import loadwarden.sdk.orca as sdk_orca
from loadwarden.policy import InvalidArgument, LoadSample
from loadwarden.sdk import _types as sdk_types
from loadwarden.server import CoreLimits, DecisionCore, ManualClock, PoolSettings, ServerSpec
from loadwarden.server.engine import _orca, _orca_limits
from loadwarden.server.engine._orca import (
    BadReport,
    OrcaIngester,
    OrcaSettings,
    PoolOrca,
    named_metrics_of,
    sample_from_orca,
)
from loadwarden.server.rpc import _convert
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

CONFIGURED = frozenset({"10.0.0.1:50051", "10.0.0.2:50051"})


def _core() -> DecisionCore:
    core = DecisionCore(CoreLimits(), clock=ManualClock(), rng=random.Random(3))
    servers = [ServerSpec("s1", "10.0.0.1:50051"), ServerSpec("s2", "10.0.0.2:50051")]
    core.configure_pool(PoolSettings(name="api", require_load_report=True), servers)
    return core


def _ingester(core: DecisionCore, settings: OrcaSettings | None = None) -> OrcaIngester:
    ingest = PoolOrca("api", settings or OrcaSettings(), CONFIGURED)
    return OrcaIngester(core.find_pool, core.report_load, [ingest], random.Random(7))


def test_fractions_become_percentages_and_the_rates_stay_per_second() -> None:
    report = orca_pb.OrcaLoadReport(
        cpu_utilization=0.42,
        mem_utilization=0.6,
        application_utilization=0.35,
        rps_fractional=200.0,
        eps=20.0,
        named_metrics={"queue_depth": 7.0},
        utilization={"gpu": 0.5},
    )
    sample = sample_from_orca(report)
    assert sample is not None
    assert sample.cpu_percent == pytest.approx(42.0) and sample.memory_percent == pytest.approx(60.0)
    assert dataclasses.replace(sample, cpu_percent=0.0, memory_percent=0.0) == LoadSample(
        cpu_percent=0.0,
        memory_percent=0.0,
        active_requests=0,  # ORCA has no field for it
        mean_latency_ms=0.0,
        error_rate=0.1,  # eps / rps
        application_utilization=0.35,
        requests_per_second=200.0,
        errors_per_second=20.0,
        named_metrics={"queue_depth": 7.0, "utilization.gpu": 0.5},
    )


def test_loadwardens_own_named_metrics_fill_their_fields() -> None:
    report = orca_pb.OrcaLoadReport(
        cpu_utilization=0.2,
        rps_fractional=10.0,
        eps=5.0,
        named_metrics={
            _orca.ACTIVE_REQUESTS_METRIC: 4.0,
            _orca.MEAN_LATENCY_METRIC: 12.5,
            _orca.ERROR_RATE_METRIC: 0.05,
            "queue_depth": 1.0,
        },
    )
    sample = sample_from_orca(report)
    assert sample is not None
    assert (sample.active_requests, sample.mean_latency_ms, sample.error_rate) == (4, 12.5, 0.05)
    assert sample.named_metrics == {"queue_depth": 1.0}


def test_over_full_values_are_capped_and_the_deprecated_rps_is_read() -> None:
    sample = sample_from_orca(
        orca_pb.OrcaLoadReport(cpu_utilization=1.7, mem_utilization=3.0, application_utilization=500.0, rps=12)
    )
    assert sample is not None
    assert (sample.cpu_percent, sample.memory_percent, sample.application_utilization) == (100.0, 100.0, 100.0)
    assert sample.requests_per_second == 12.0


def test_a_report_that_says_nothing_is_not_an_idle_one() -> None:
    assert sample_from_orca(orca_pb.OrcaLoadReport()) is None


@pytest.mark.parametrize(
    "values",
    [
        {"cpu_utilization": float("nan")},
        {"mem_utilization": -0.1},
        {"application_utilization": float("inf")},
        {"rps_fractional": -1.0},
        {"eps": float("nan")},
    ],
)
def test_impossible_values_are_refused(values: dict[str, float]) -> None:
    with pytest.raises(BadReport):
        sample_from_orca(orca_pb.OrcaLoadReport(**values))


def test_named_metrics_are_bounded_and_checked() -> None:
    report = orca_pb.OrcaLoadReport(
        named_metrics={f"m{i:02}": float(i) for i in range(40)} | {"bad name": 1.0, "nan": float("nan")},
    )
    named = named_metrics_of(report)
    assert len(named) == 32 and "bad name" not in named and "nan" not in named
    assert list(named) == sorted(named) and named["m00"] == 0.0


def test_a_report_becomes_the_servers_load_and_shows_in_the_status() -> None:
    core = _core()
    ingester = _ingester(core)
    answer = orca_pb.OrcaLoadReport(cpu_utilization=0.3, rps_fractional=5.0, named_metrics={"q": 2.0})
    assert ingester._take(ingester.ingest[0], "s1", "10.0.0.1:50051", answer.SerializeToString()) == ""
    server = core.pool("api").servers["s1"]
    assert server.load is not None and server.load.cpu_percent == pytest.approx(30.0)
    shown = _convert.load_report(server.load, "api", "s1")
    assert (shown.requests_per_second, dict(shown.named_metrics)) == (5.0, {"q": 2.0})
    assert ingester.reports_total == 1


def test_what_is_not_a_report_ends_the_stream_and_takes_nothing() -> None:
    core = _core()
    ingester = _ingester(core)
    ingest = ingester.ingest[0]
    assert ingester._take(ingest, "s1", "10.0.0.1:50051", b"\xff\xff\xff") == "an answer that is not an OrcaLoadReport"
    nan = orca_pb.OrcaLoadReport(cpu_utilization=float("nan")).SerializeToString()
    assert ingester._take(ingest, "s1", "10.0.0.1:50051", nan) == "a report with cpu_utilization is nan"
    assert ingester._take(ingest, "s1", "10.0.0.1:50051", b"") == ""  # says nothing: skipped
    moved = orca_pb.OrcaLoadReport(cpu_utilization=0.3).SerializeToString()
    assert ingester._take(ingest, "s1", "10.9.9.9:1", moved) == ""  # the server moved meanwhile
    assert ingester._take(ingest, "gone", "10.0.0.1:50051", moved) == ""
    assert core.pool("api").servers["s1"].load is None and ingester.reports_total == 0


def test_streams_go_only_to_configured_addresses_bounded(caplog: pytest.LogCaptureFixture) -> None:
    core = _core()
    core.register_server("api", ServerSpec("rpc", "10.0.0.9:50051"))
    assert _ingester(core).targets(_ingester(core).ingest[0]) == [("s1", "10.0.0.1:50051"), ("s2", "10.0.0.2:50051")]
    bounded = _ingester(core, OrcaSettings(max_streams=1))
    with caplog.at_level(logging.WARNING, logger="loadwarden.server"):
        assert bounded.targets(bounded.ingest[0]) == [("s1", "10.0.0.1:50051")]
    assert "max_streams is 1; s2 and later are not ingested" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="loadwarden.server"):
        bounded.targets(bounded.ingest[0])  # every rescan: warned once
    assert not caplog.text
    gone = OrcaIngester(
        core.find_pool, core.report_load, [PoolOrca("nope", OrcaSettings(), CONFIGURED)], random.Random()
    )
    assert gone.targets(gone.ingest[0]) == []
    off = OrcaIngester(
        core.find_pool, core.report_load, [PoolOrca("api", OrcaSettings(enabled=False), CONFIGURED)], random.Random()
    )
    assert off.ingest == ()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"report_interval_ms": 50}, "report_interval_ms"),
        ({"report_interval_ms": True}, "report_interval_ms"),
        ({"initial_backoff_ms": 0}, "initial_backoff_ms"),
        ({"initial_backoff_ms": 500, "max_backoff_ms": 100}, "max_backoff_ms"),
        ({"max_streams": 0}, "max_streams"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_settings_name_what_is_wrong(values: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        OrcaSettings(**values)
    assert raised.value.field == field


# -- ReportLoad's fields ------------------------------------------------------------


def _report(**fields: Any) -> _pb.ReportLoadRequest:
    return _pb.ReportLoadRequest(reports=[_common.LoadReport(pool="api", server_id="s1", **fields)])


def test_report_load_takes_the_orca_fields() -> None:
    request = _report(application_utilization=1.5, requests_per_second=10.0, errors_per_second=1.0)
    request.reports[0].named_metrics["queue_depth"] = -3.0  # opaque: any finite value
    [taken] = _convert.load_reports(request.reports)
    assert taken.sample.application_utilization == 1.5 and taken.sample.named_metrics == {"queue_depth": -3.0}
    assert (taken.sample.requests_per_second, taken.sample.errors_per_second) == (10.0, 1.0)


@pytest.mark.parametrize(
    ("fields", "named", "field", "problem"),
    [
        ({"application_utilization": 101.0}, {}, "reports[0].application_utilization", "[0, 100]"),
        ({"requests_per_second": -1.0}, {}, "reports[0].requests_per_second", "[0, 1e+09]"),
        ({"errors_per_second": float("nan")}, {}, "reports[0].errors_per_second", "finite"),
        ({}, {f"m{i}": 1.0 for i in range(33)}, "reports[0].named_metrics", "at most 32 entries, got 33"),
        ({}, {"a b": 1.0}, "reports[0].named_metrics", "names are 1-64 characters"),
        ({}, {"x" * 65: 1.0}, "reports[0].named_metrics", "names are 1-64 characters"),
        ({}, {"q": float("inf")}, "reports[0].named_metrics['q']", "finite"),
    ],
)
def test_report_load_refuses_what_the_contract_does_not_allow(
    fields: dict[str, Any], named: dict[str, float], field: str, problem: str
) -> None:
    request = _report(**fields)
    request.reports[0].named_metrics.update(named)
    with pytest.raises(InvalidArgument) as raised:
        _convert.load_reports(request.reports)
    assert raised.value.field == field and problem in raised.value.problem


def test_the_sdk_and_the_service_agree_on_names_and_bounds() -> None:
    assert (
        sdk_orca.ACTIVE_REQUESTS_METRIC,
        sdk_orca.MEAN_LATENCY_METRIC,
        sdk_orca.ERROR_RATE_METRIC,
    ) == _orca.OWN_METRICS
    assert sdk_orca.STREAM_CORE_METRICS == _orca.STREAM_CORE_METRICS
    assert (sdk_types.MAX_NAMED_METRICS, sdk_types.NAMED_METRIC_MAX_LEN) == (
        _orca_limits.MAX_NAMED_METRICS,
        _orca_limits.NAMED_METRIC_MAX_LEN,
    )


def test_a_load_sample_with_named_metrics_still_hashes() -> None:
    sample = LoadSample(1.0, 2.0, 0, 0.0, 0.0, named_metrics={"q": 1.0})
    assert hash(sample) == hash(LoadSample(1.0, 2.0, 0, 0.0, 0.0))
