"""The metrics SDK: a MeterProvider whose readers feed ``/metrics`` and, if asked, OTLP.

Each call builds its own provider and its own prometheus_client
``CollectorRegistry`` (never the process-global default), so several services
in one process (tests) each expose their own numbers. The provider is not made
the global one: the service hands it to its instruments explicitly.

Exporters beyond the Prometheus text come from ``OTEL_METRICS_EXPORTER``, a
comma-separated list of ``otlp``, ``console``, ``prometheus`` (the admin port;
always on when it is) and ``none``. OTLP reads the standard ``OTEL_EXPORTER_OTLP_*``
variables; ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`` (or ``OTEL_EXPORTER_OTLP_PROTOCOL``)
is ``grpc`` (default) or ``http/protobuf``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

EXPORTERS_VARIABLE = "OTEL_METRICS_EXPORTER"
EXPORTERS = ("otlp", "console", "prometheus", "none")
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_SERVICE_NAME = "loadwarden"


@dataclass(frozen=True, slots=True)
class MetricsSetup:
    """A configured metrics pipeline.

    Attributes:
        meter_provider: Give it to the instruments (``ServerMetrics(meter_provider)``).
        registry: The Prometheus registry ``render`` reads; None without the Prometheus reader.
    """

    meter_provider: MeterProvider
    registry: CollectorRegistry | None

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The current metrics as Prometheus text (or OpenMetrics, if ``accept`` asks for it).

        Collection runs the observable-instrument callbacks, so call this on the
        thread that owns the observed state (the service's event loop).

        Returns:
            The body and its content type, as prometheus_client chose them.

        Raises:
            RuntimeError: configured without the Prometheus reader.
        """
        if self.registry is None:
            raise RuntimeError("metrics were configured without the Prometheus reader")
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def shutdown(self) -> None:
        """Flushes the exporters and detaches the Prometheus collector."""
        self.meter_provider.shutdown()


def wants_exporters(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``OTEL_METRICS_EXPORTER`` asks for an exporter other than Prometheus."""
    return bool(_exporters(os.environ if environ is None else environ) - {"prometheus"})


def configure_metrics(
    *,
    prometheus: bool = True,
    environ: Mapping[str, str] | None = None,
    resource: Resource | None = None,
) -> MetricsSetup:
    """Builds a MeterProvider with a Prometheus reader on a new registry (with the
    process and Python collectors), plus the exporters ``OTEL_METRICS_EXPORTER`` names.

    Args:
        prometheus: Attach the Prometheus reader (``/metrics``).
        environ: Where ``OTEL_*`` settings are read; ``os.environ`` by default.
        resource: The resource; by default ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME``,
            with ``service.name`` "loadwarden" unless they set one.

    Raises:
        ValueError: an unknown exporter or protocol; the message names the variable.
    """
    environ = os.environ if environ is None else environ
    exporters = _exporters(environ)
    readers: list[MetricReader] = []
    registry = None
    if prometheus:
        registry = CollectorRegistry(auto_describe=True)
        # The standard process_* (CPU, memory, file descriptors, start time) and python_*
        # (version, garbage collection) series every Prometheus client library exposes.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        readers.append(PrometheusMetricReader(registry=registry, scope_info_enabled=False))
    if "otlp" in exporters:
        readers.append(PeriodicExportingMetricReader(_otlp_exporter(environ)))
    if "console" in exporters:
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
    return MetricsSetup(MeterProvider(metric_readers=readers, resource=resource or default_resource()), registry)


def default_resource() -> Resource:
    """The resource from ``OTEL_RESOURCE_ATTRIBUTES``/``OTEL_SERVICE_NAME``.

    Named loadwarden unless they say otherwise.
    """
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


def _exporters(environ: Mapping[str, str]) -> set[str]:
    names = {name.strip().lower() for name in environ.get(EXPORTERS_VARIABLE, "").split(",") if name.strip()}
    unknown = names - set(EXPORTERS)
    if unknown:
        raise ValueError(
            f"{EXPORTERS_VARIABLE}: unknown exporter {sorted(unknown)[0]!r}; valid exporters: {', '.join(EXPORTERS)}"
        )
    return set() if "none" in names else names


def _otlp_exporter(environ: Mapping[str, str]) -> MetricExporter:
    key = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
    if not environ.get(key):
        key = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = environ.get(key, "").strip() or "grpc"
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

        return HttpExporter()
    raise ValueError(f"{key}: unknown protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
