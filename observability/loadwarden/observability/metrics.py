"""The service's metrics pipeline (OpenTelemetry SDK, Prometheus text and OTLP exporters).
Public names only; imported lazily, so a service without it never loads the SDK."""

from ._metrics import MetricsSetup, configure_metrics, wants_exporters

__all__ = ["MetricsSetup", "configure_metrics", "wants_exporters"]
