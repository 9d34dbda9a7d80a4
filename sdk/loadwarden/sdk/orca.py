"""ORCA for backends: a `BackendReporter`'s numbers as gRPC's backend metrics (gRFC A51).

ORCA (Open Request Cost Aggregation) is how a gRPC backend tells its clients its load:
per call, in the trailing metadata `endpoint-load-metrics-bin`, and out of band, on a
`xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream that sends a report
every interval the client asks for. gRPC's `weighted_round_robin` balancer weighs each
backend by them (gRFC A58: `qps / (utilization + eps / qps * error_utilization_penalty)`,
`utilization` being `application_utilization` when above 0, else `cpu_utilization`),
and a loadwarden service with ORCA ingestion turns the same stream into the backend's
load report. So both see the same numbers.

A report carries the reporter's `LoadReport` (`to_orca`): CPU and memory as fractions
(`cpu_percent / 100`), the application utilisation, requests and errors per second,
the backend's named metrics, and loadwarden's own figures ORCA has no field for as
named metrics (`loadwarden.active_requests`, `loadwarden.mean_latency_ms`,
`loadwarden.error_rate`).

Needs xds-protos (`pip install 'loadwarden[orca]'`); the rest of the SDK does not.

Example:
    from loadwarden.sdk import BackendReporter
    from loadwarden.sdk.orca import AsyncOrcaInterceptor, add_orca_service, call_metrics

    reporter = BackendReporter(None, "api", "api-1")  # ORCA only: nothing pushed
    server = grpc.aio.server(interceptors=[AsyncOrcaInterceptor(reporter)])
    add_orca_service(server, reporter, min_interval_s=1.0)

    async def Lookup(self, request, context):
        call_metrics().record_request_cost("rows", 42.0)  # this call's trailer only
        ...
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc

from loadwarden.sdk._async.grpc_server import ORCA_TRAILER_KEY, AsyncOrcaInterceptor
from loadwarden.sdk._orca_codec import ACTIVE_REQUESTS_METRIC, ERROR_RATE_METRIC, MEAN_LATENCY_METRIC, to_orca, trailer
from loadwarden.sdk._orca_codec import report_pb as _report_pb
from loadwarden.sdk._orca_codec import service_pb as _service_pb
from loadwarden.sdk._reporter import BackendReporter, CallMetrics, current_call
from loadwarden.sdk._sync.grpc_server import OrcaInterceptor
from loadwarden.sdk._types import LoadReport

__all__ = [
    "ACTIVE_REQUESTS_METRIC",
    "ERROR_RATE_METRIC",
    "MEAN_LATENCY_METRIC",
    "SERVICE_NAME",
    "STREAM_CORE_METRICS",
    "TRAILER_KEY",
    "AsyncOrcaInterceptor",
    "CallMetrics",
    "OrcaInterceptor",
    "OrcaService",
    "add_orca_service",
    "call_metrics",
    "to_orca",
    "trailer",
    "wrr_weight",
]

_log = logging.getLogger("loadwarden.sdk.orca")

TRAILER_KEY = ORCA_TRAILER_KEY
"""The trailing metadata key of a per-call report: a serialized `OrcaLoadReport`."""
SERVICE_NAME = "xds.service.orca.v3.OpenRcaService"
"""ORCA's out-of-band service."""
STREAM_CORE_METRICS = f"/{SERVICE_NAME}/StreamCoreMetrics"
"""Its one method, server-streaming: `OrcaLoadReportRequest` in, `OrcaLoadReport`s out."""
DEFAULT_MIN_INTERVAL_S = 1.0
"""`add_orca_service`'s shortest interval between two reports of a stream, seconds."""
DEFAULT_MAX_STREAMS = 1_000
"""`add_orca_service`'s out-of-band streams open at once, at most."""


def call_metrics() -> CallMetrics:
    """The running RPC's per-call recorder: what it records goes into this call's ORCA trailer.

    Outside a call an `OrcaInterceptor` / `AsyncOrcaInterceptor` reports on, a fresh
    recorder that nobody reads.
    """
    return current_call()


def wrr_weight(report: LoadReport, error_utilization_penalty: float = 1.0) -> float:
    """The weight gRPC's `weighted_round_robin` gives a backend reporting `report` (gRFC A58).

    `qps / (utilization + eps / qps * error_utilization_penalty)`, with `utilization`
    the application utilisation when above 0, else the CPU's (as a fraction); 0 (no
    weight yet: the balancer uses the mean) when the backend reports no requests or no
    utilisation. For a `LoadReport` read back from `GetLoadStatus`, this is the weight a
    proxyless gRPC client computes from the same backend's ORCA reports.
    """
    qps, eps = report.requests_per_second, report.errors_per_second
    utilization = report.application_utilization or report.cpu_percent / 100.0
    if qps > 0 and utilization > 0:
        utilization += eps / qps * error_utilization_penalty
    return qps / utilization if utilization > 0 else 0.0


class OrcaService:
    """ORCA's out-of-band service for a grpc.aio server, serving one reporter's numbers.

    Each `StreamCoreMetrics` stream gets a report at once, then one every interval it
    asked for (`report_interval`); an interval below `min_interval_s`, or none, is
    `min_interval_s` (gRFC A51). A stream ends only when its client cancels it or the
    server stops. A report the reporter cannot build (its sampler raised) is skipped and
    logged: the client sees no report, never a made-up idle one. Request costs are
    per-call only (A51), so `request_cost_names` is ignored.

    Args:
        reporter: Whose numbers the reports carry.
        min_interval_s: Shortest interval between two reports of a stream, seconds, > 0.
            gRPC's own ORCA services default to 30 s; a report here costs one cached host
            sample and a small message, and loadwarden's ingestion asks every second.
        max_streams: Streams open at once, at most; one more is refused with
            RESOURCE_EXHAUSTED. A `weighted_round_robin` client opens one per channel.
        max_sample_age_s: Longest a host sample is reused between streams, seconds;
            `min_interval_s` by default.

    Raises:
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """

    def __init__(
        self,
        reporter: BackendReporter,
        *,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        max_streams: int = DEFAULT_MAX_STREAMS,
        max_sample_age_s: float | None = None,
    ) -> None:
        if not isinstance(reporter, BackendReporter):
            raise ValueError(f"reporter must be a BackendReporter, got {reporter!r}")
        if isinstance(min_interval_s, bool) or not isinstance(min_interval_s, int | float):
            raise ValueError(f"min_interval_s must be a positive number of seconds, got {min_interval_s!r}")
        if not 0 < min_interval_s < math.inf:
            raise ValueError(f"min_interval_s must be a positive number of seconds, got {min_interval_s!r}")
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise ValueError(f"max_streams must be an integer >= 1, got {max_streams!r}")
        if max_sample_age_s is not None and (
            isinstance(max_sample_age_s, bool) or not isinstance(max_sample_age_s, int | float) or max_sample_age_s < 0
        ):
            raise ValueError(f"max_sample_age_s must be a number of seconds >= 0 or None, got {max_sample_age_s!r}")
        self.reporter: BackendReporter = reporter
        self.min_interval_s: float = float(min_interval_s)
        self.max_streams: int = max_streams
        self._max_age_s = self.min_interval_s if max_sample_age_s is None else float(max_sample_age_s)
        self.streams: int = 0  # open now, count
        self._report_failed = False

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a grpc.aio server (`add_orca_service` does)."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "StreamCoreMetrics": grpc.unary_stream_rpc_method_handler(
                    self.stream_core_metrics,
                    request_deserializer=_service_pb.OrcaLoadReportRequest.FromString,
                    response_serializer=_report_pb.OrcaLoadReport.SerializeToString,
                )
            },
        )

    def interval_s(self, request: Any) -> float:
        """The interval a stream asking `request` gets, seconds."""
        asked = float(request.report_interval.seconds + request.report_interval.nanos / 1e9)
        return max(self.min_interval_s, asked)

    async def stream_core_metrics(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        """`StreamCoreMetrics`: a report now, then one every interval, until the client cancels."""
        if self.streams >= self.max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self.max_streams} ORCA streams at once")
        interval_s = self.interval_s(request)
        loop = asyncio.get_running_loop()
        self.streams += 1
        try:
            due = loop.time()
            while True:
                report = self._report()
                if report is not None:
                    yield report
                due = max(due + interval_s, loop.time())  # a fixed grid; a late report is not caught up
                await asyncio.sleep(due - loop.time())
        finally:
            self.streams -= 1

    def _report(self) -> Any | None:
        try:
            report = to_orca(self.reporter.current_report(max_sample_age_s=self._max_age_s))
        except Exception as exc:  # noqa: BLE001 - a report left out; the stream goes on
            if not self._report_failed:
                _log.warning("an ORCA report could not be built; skipped: %r", exc, exc_info=True)
            self._report_failed = True
            return None
        self._report_failed = False
        return report


def add_orca_service(
    server: grpc.aio.Server,
    reporter: BackendReporter,
    *,
    min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> OrcaService:
    """Serves ORCA's out-of-band `OpenRcaService` on a grpc.aio server, from `reporter`'s numbers.

    Call it before `server.start()`. See `OrcaService` for the arguments.

    Raises:
        TypeError: `server` is not a grpc.aio server (a sync server would hold a worker
            thread for each stream for as long as it lasts).
        ValueError: An argument is out of range or of the wrong kind; the message names it.
    """
    if not isinstance(server, grpc.aio.Server):
        raise TypeError(f"add_orca_service needs a grpc.aio server, got {server!r}")
    service = OrcaService(reporter, min_interval_s=min_interval_s, max_streams=max_streams)
    server.add_generic_rpc_handlers((service.handler(),))
    return service
