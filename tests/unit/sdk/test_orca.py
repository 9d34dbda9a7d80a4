"""ORCA in the SDK, without sockets: the report a BackendReporter's numbers make, the
per-call recorder, gRPC's weighted_round_robin weight, the rates and the host sample
cache, and that only `loadwarden.sdk.orca` needs xds-protos."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from xds.data.orca.v3 import orca_load_report_pb2 as orca_pb  # type: ignore[import-untyped]  # xds-protos: no stubs
from xds.service.orca.v3 import orca_pb2 as orca_service_pb  # type: ignore[import-untyped]  # xds-protos: no stubs

from loadwarden.sdk import BackendReporter, Client, LoadReport
from loadwarden.sdk._convert import load_report_from_proto, load_report_to_proto, report_load_request
from loadwarden.sdk._reporter import CallMetrics, recording_call
from loadwarden.sdk.orca import (
    ACTIVE_REQUESTS_METRIC,
    ERROR_RATE_METRIC,
    MEAN_LATENCY_METRIC,
    TRAILER_KEY,
    AsyncOrcaInterceptor,
    OrcaService,
    add_orca_service,
    call_metrics,
    to_orca,
    trailer,
    wrr_weight,
)
from loadwarden.v1 import common_pb2 as _common
from loadwarden.v1 import decision_pb2 as _pb

from .conftest import FakeChannel, FakeClock, as_channel

REPORT = LoadReport(
    "api",
    "s1",
    cpu_percent=42.0,
    memory_percent=60.0,
    active_requests=3,
    mean_latency_ms=12.5,
    error_rate=0.1,
    application_utilization=0.35,
    requests_per_second=200.0,
    errors_per_second=20.0,
    named_metrics={"queue_depth": 7.0},
)


class Sampler:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> tuple[float, float]:
        self.calls += 1
        return 25.0, 50.0


@pytest.fixture
def client(fake_channel: FakeChannel) -> Iterator[Client]:
    client = Client(channel=as_channel(fake_channel), timeout_s=0.5, breaker=None, retry=None)
    yield client
    client.close()


def _reporter(clock: FakeClock, client: Client | None = None, **options: Any) -> BackendReporter:
    return BackendReporter(client, "api", "s1", sampler=Sampler(), clock=clock, perf_counter=clock, **options)


# -- the report ---------------------------------------------------------------------


def test_a_load_report_becomes_orca_fractions_rates_and_named_metrics() -> None:
    message = to_orca(REPORT)
    assert message.cpu_utilization == pytest.approx(0.42)
    assert message.mem_utilization == pytest.approx(0.60)
    assert message.application_utilization == 0.35
    assert (message.rps_fractional, message.eps) == (200.0, 20.0)
    assert dict(message.named_metrics) == {
        "queue_depth": 7.0,
        ACTIVE_REQUESTS_METRIC: 3.0,
        MEAN_LATENCY_METRIC: 12.5,
        ERROR_RATE_METRIC: 0.1,
    }
    assert not message.request_cost and not message.utilization and message.rps == 0  # rps: deprecated


def test_what_a_call_recorded_wins_in_its_trailer() -> None:
    call = CallMetrics()
    call.record_request_cost("rows", 12.0)
    call.record_utilization("gpu", 0.5)
    call.record_named_metric("queue_depth", 9.0)
    call.record_cpu_utilization(0.9)
    call.record_application_utilization(1.5)
    message = orca_pb.OrcaLoadReport.FromString(trailer(REPORT, call))
    assert message.cpu_utilization == 0.9 and message.application_utilization == 1.5
    assert dict(message.request_cost) == {"rows": 12.0} and dict(message.utilization) == {"gpu": 0.5}
    assert message.named_metrics["queue_depth"] == 9.0 and message.mem_utilization == pytest.approx(0.6)
    assert TRAILER_KEY == "endpoint-load-metrics-bin"


@pytest.mark.parametrize(
    ("record", "args"),
    [
        ("record_request_cost", ("", 1.0)),
        ("record_request_cost", ("rows", float("inf"))),
        ("record_utilization", ("gpu", 1.5)),
        ("record_named_metric", ("a b", 1.0)),
        ("record_named_metric", ("x" * 65, 1.0)),
        ("record_cpu_utilization", (-0.1,)),
        ("record_application_utilization", (float("nan"),)),
        ("record_application_utilization", (True,)),
    ],
)
def test_the_call_recorder_refuses_what_orca_cannot_carry(record: str, args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        getattr(CallMetrics(), record)(*args)


def test_the_call_recorder_holds_at_most_32_names_each() -> None:
    call = CallMetrics()
    for i in range(32):
        call.record_request_cost(f"c{i}", 1.0)
    call.record_request_cost("c0", 2.0)  # a name already there is replaced
    with pytest.raises(ValueError, match="at most 32"):
        call.record_request_cost("c32", 1.0)


def test_call_metrics_is_the_running_calls_recorder() -> None:
    outside = call_metrics()
    outside.record_request_cost("rows", 1.0)  # recorded into a recorder nobody reads
    with recording_call() as call:
        assert call_metrics() is call
        with recording_call() as inner:
            assert call_metrics() is inner
        assert call_metrics() is call
    assert call_metrics() is not outside and not call_metrics().request_cost


@pytest.mark.parametrize(
    ("report", "penalty", "weight"),
    [
        (LoadReport("p", "s", cpu_percent=50.0, requests_per_second=100.0), 1.0, 200.0),
        # application utilisation, when above 0, stands for the CPU's
        (LoadReport("p", "s", cpu_percent=50.0, application_utilization=0.25, requests_per_second=100.0), 1.0, 400.0),
        # errors: utilization + eps / qps * penalty
        (LoadReport("p", "s", cpu_percent=50.0, requests_per_second=100.0, errors_per_second=10.0), 2.0, 100 / 0.7),
        (LoadReport("p", "s", cpu_percent=50.0, requests_per_second=100.0, errors_per_second=10.0), 0.0, 200.0),
        # no requests or no utilisation: no weight yet
        (LoadReport("p", "s", cpu_percent=50.0), 1.0, 0.0),
        (LoadReport("p", "s", requests_per_second=100.0), 1.0, 0.0),
    ],
)
def test_wrr_weight_is_grpcs_formula(report: LoadReport, penalty: float, weight: float) -> None:
    assert wrr_weight(report, penalty) == pytest.approx(weight)


# -- the contract ---------------------------------------------------------------------


def test_the_sdks_load_report_carries_every_field_of_the_contracts() -> None:
    assert {f.name for f in _common.LoadReport.DESCRIPTOR.fields} <= set(LoadReport.__dataclass_fields__)
    assert load_report_from_proto(load_report_to_proto(REPORT)) == REPORT
    [pushed] = report_load_request([REPORT]).reports
    assert dict(pushed.named_metrics) == {"queue_depth": 7.0} and pushed.errors_per_second == 20.0


# -- the reporter ---------------------------------------------------------------------


def test_rates_are_finished_and_failed_requests_per_second_over_the_window(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock, rate_window_s=10.0)
    for i in range(100):  # 10 a second for 10 s, one in ten failing
        with reporter.track() as call:
            if i % 10 == 0:
                call.fail()
        fake_clock.advance(0.1)
    report = reporter.current_report()
    assert report.requests_per_second == pytest.approx(10.0, rel=0.05)
    assert report.errors_per_second == pytest.approx(1.0, rel=0.1)
    fake_clock.advance(5.0)  # half a window of silence
    assert reporter.current_report().requests_per_second == pytest.approx(5.0, rel=0.15)
    fake_clock.advance(30.0)
    assert reporter.current_report().requests_per_second == 0.0  # idle means 0, measured


def test_a_young_reporters_first_requests_are_no_burst(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock, rate_window_s=10.0)
    for _ in range(3):
        reporter.observe(0.001)
    fake_clock.advance(0.01)
    assert reporter.current_report().requests_per_second == pytest.approx(3.0)  # over one mark (1 s), not 10 ms


def test_the_reporter_keeps_at_most_a_dozen_rate_marks(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock, rate_window_s=1.0)
    for _ in range(10_000):
        reporter.observe(0.001)
        fake_clock.advance(0.01)
    assert len(reporter._requests._marks) <= 12


def test_the_reports_carry_the_backends_own_utilisation_and_metrics(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock)
    reporter.set_application_utilization(1.2)
    reporter.set_named_metric("queue_depth", 4.0)
    reporter.set_named_metric("gone", 1.0)
    reporter.set_named_metric("gone", None)
    report = reporter.current_report()
    assert report.application_utilization == 1.2 and report.named_metrics == {"queue_depth": 4.0}
    reporter.set_application_utilization(None)
    assert reporter.current_report().application_utilization == 0.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda r: r.set_application_utilization(-1.0), "value"),
        (lambda r: r.set_application_utilization(101.0), "value"),
        (lambda r: r.set_named_metric("loadwarden.active_requests", 1.0), "loadwarden's"),
        (lambda r: r.set_named_metric("bad name", 1.0), "name"),
        (lambda r: r.set_named_metric("ok", float("nan")), "finite"),
    ],
)
def test_the_reporters_own_metrics_are_checked(fake_clock: FakeClock, call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(_reporter(fake_clock))


def test_at_most_32_named_metrics(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock)
    for i in range(32):
        reporter.set_named_metric(f"m{i}", float(i))
    with pytest.raises(ValueError, match="at most 32"):
        reporter.set_named_metric("m32", 1.0)


def test_orca_reads_reuse_a_recent_host_sample_and_pushes_never_do(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock)
    sampler = reporter._sampler
    assert isinstance(sampler, Sampler)
    for _ in range(100):
        reporter.current_report(max_sample_age_s=1.0)
    assert sampler.calls == 1
    fake_clock.advance(1.5)
    reporter.current_report(max_sample_age_s=1.0)
    assert sampler.calls == 2
    reporter.current_report()
    reporter.current_report()
    assert sampler.calls == 4


def test_a_reporter_without_a_client_pushes_nothing(fake_clock: FakeClock) -> None:
    reporter = _reporter(fake_clock)
    with reporter:
        assert not reporter.running
    with pytest.raises(TypeError):
        reporter.report_now()
    assert reporter.current_report().cpu_percent == 25.0


def test_pushes_carry_the_new_fields_but_not_loadwardens_orca_names(
    fake_clock: FakeClock, client: Client, fake_channel: FakeChannel
) -> None:
    reporter = _reporter(fake_clock, client)
    reporter.set_named_metric("queue_depth", 2.0)
    reporter.observe(0.010)
    fake_clock.advance(2.0)
    assert reporter.report_now()
    [request] = fake_channel.requests("ReportLoad", _pb.ReportLoadRequest)
    [pushed] = request.reports
    assert dict(pushed.named_metrics) == {"queue_depth": 2.0}
    assert pushed.requests_per_second == pytest.approx(0.5)


# -- the out-of-band service and the interceptor, unserved ----------------------------


def test_the_oob_interval_is_the_asked_one_or_the_minimum(fake_clock: FakeClock) -> None:
    service = OrcaService(_reporter(fake_clock), min_interval_s=1.0)

    def asking(seconds: int, nanos: int = 0) -> Any:
        request = orca_service_pb.OrcaLoadReportRequest()
        request.report_interval.seconds, request.report_interval.nanos = seconds, nanos
        return request

    assert service.interval_s(asking(0)) == 1.0  # none asked: the minimum
    assert service.interval_s(asking(0, 100_000_000)) == 1.0
    assert service.interval_s(asking(10)) == 10.0
    assert service.interval_s(asking(-5)) == 1.0


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"min_interval_s": 0}, "min_interval_s"),
        ({"min_interval_s": float("inf")}, "min_interval_s"),
        ({"max_streams": 0}, "max_streams"),
        ({"max_sample_age_s": -1}, "max_sample_age_s"),
    ],
)
def test_the_oob_service_checks_its_arguments(fake_clock: FakeClock, options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        OrcaService(_reporter(fake_clock), **options)


def test_the_oob_service_needs_a_grpc_aio_server(fake_clock: FakeClock) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    with pytest.raises(TypeError, match=r"grpc\.aio"):
        add_orca_service(server, _reporter(fake_clock))  # type: ignore[arg-type]  # the mistake tested


@pytest.mark.parametrize(
    ("options", "name"),
    [({"track": 1}, "track"), ({"methods": "all"}, "methods"), ({"max_sample_age_s": -1.0}, "max_sample_age_s")],
)
def test_the_interceptor_checks_its_arguments(fake_clock: FakeClock, options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        AsyncOrcaInterceptor(_reporter(fake_clock), **options)


# -- xds-protos only where ORCA is used ------------------------------------------------


def test_the_sdk_imports_no_xds_protos_until_orca_is_used() -> None:
    code = (
        "import sys; import loadwarden.sdk, loadwarden.sdk.integrations.grpc_server; "
        "from loadwarden.sdk import BackendReporter; "
        "print(sorted(m for m in sys.modules if m == 'xds' or m.startswith('xds.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_without_xds_protos_orca_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['xds'] = None\n"
        "try:\n    import loadwarden.sdk.orca\n"
        "except ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'loadwarden[orca]'" in done.stdout, done
