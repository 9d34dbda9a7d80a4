"""ORCA's messages from a load report: what `loadwarden.sdk.orca` serves and the SDK's
server interceptors put in each call's trailer. Imports xds-protos (the ``orca`` extra),
so it is imported only when ORCA is used; it imports no interceptor, so that they can
import it."""

from __future__ import annotations

from typing import Any

try:
    from xds.data.orca.v3 import orca_load_report_pb2 as report_pb  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
    from xds.service.orca.v3 import orca_pb2 as service_pb  # type: ignore[import-untyped]  # xds-protos: no stubs, no py.typed
except ModuleNotFoundError as _missing:
    raise ModuleNotFoundError(
        "loadwarden.sdk.orca needs xds-protos (ORCA's messages), which is not installed: "
        "pip install 'loadwarden[orca]'",
        name=_missing.name,
    ) from None

from loadwarden.sdk._reporter import CallMetrics
from loadwarden.sdk._types import LoadReport

__all__ = [
    "ACTIVE_REQUESTS_METRIC",
    "ERROR_RATE_METRIC",
    "MEAN_LATENCY_METRIC",
    "report_pb",
    "service_pb",
    "to_orca",
    "trailer",
]

ACTIVE_REQUESTS_METRIC = "loadwarden.active_requests"
"""Named metric: requests in flight, count."""
MEAN_LATENCY_METRIC = "loadwarden.mean_latency_ms"
"""Named metric: EWMA of request latency, milliseconds."""
ERROR_RATE_METRIC = "loadwarden.error_rate"
"""Named metric: EWMA of request failures, 0-1."""


def to_orca(report: LoadReport, call: CallMetrics | None = None) -> Any:
    """The `xds.data.orca.v3.OrcaLoadReport` that says `report`, with `call`'s per-call values in precedence.

    Percentages become fractions (`cpu_percent` 42 is `cpu_utilization` 0.42);
    the rates go to `rps_fractional` and `eps`; the backend's named metrics are kept
    and loadwarden's own figures added (`ACTIVE_REQUESTS_METRIC`, `MEAN_LATENCY_METRIC`,
    `ERROR_RATE_METRIC`). `call` adds its request costs and named utilisations and
    replaces what it recorded.
    """
    message = report_pb.OrcaLoadReport(
        cpu_utilization=report.cpu_percent / 100.0,
        mem_utilization=report.memory_percent / 100.0,
        application_utilization=report.application_utilization,
        rps_fractional=report.requests_per_second,
        eps=report.errors_per_second,
    )
    named = message.named_metrics
    named.update(report.named_metrics)
    named[ACTIVE_REQUESTS_METRIC] = float(report.active_requests)
    named[MEAN_LATENCY_METRIC] = report.mean_latency_ms
    named[ERROR_RATE_METRIC] = report.error_rate
    if call is not None:
        if call.cpu_utilization is not None:
            message.cpu_utilization = call.cpu_utilization
        if call.application_utilization is not None:
            message.application_utilization = call.application_utilization
        named.update(call.named_metrics)
        message.utilization.update(call.utilization)
        message.request_cost.update(call.request_cost)
    return message


def trailer(report: LoadReport, call: CallMetrics | None = None) -> bytes:
    """`to_orca(report, call)` serialized: the value of the `TRAILER_KEY` trailing metadata."""
    data: bytes = to_orca(report, call).SerializeToString()
    return data
