"""Process-wide OpenTelemetry tracing setup: the one place that uses the OpenTelemetry SDK.

``server/`` and ``sdk/`` emit spans through the API; ``configure_tracing`` decides
where they go, from the standard variables:

* ``OTEL_SDK_DISABLED=true``: no tracing.
* ``OTEL_TRACES_EXPORTER``: comma-separated ``otlp``, ``console``, ``none``. When
  unset: ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, otherwise no tracing (a service
  started with no configuration does not try to reach a collector).
* ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc``
  (default) or ``http/protobuf``.
* ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (used as is) / ``OTEL_EXPORTER_OTLP_ENDPOINT``
  (``/v1/traces`` appended for HTTP).
* ``OTEL_SERVICE_NAME``, then ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, then
  the ``service_name`` argument.
* ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``,
  ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_EXPORT_TIMEOUT``: the batch processor.

Those are read from ``environ``. The exporters' other settings (headers, timeout,
compression, certificates, ``OTEL_TRACES_SAMPLER``) come from the process
environment, where the OpenTelemetry SDK reads them itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Literal, TypedDict

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger("loadwarden.observability")

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")


class _BatchSettings(TypedDict, total=False):
    """``BatchSpanProcessor`` keywords set by ``OTEL_BSP_*``; a missing one keeps the SDK's default."""

    schedule_delay_millis: int
    max_queue_size: int
    max_export_batch_size: int
    export_timeout_millis: int


_BatchParameter = Literal["schedule_delay_millis", "max_queue_size", "max_export_batch_size", "export_timeout_millis"]
_BSP_SETTINGS: dict[str, _BatchParameter] = {
    "OTEL_BSP_SCHEDULE_DELAY": "schedule_delay_millis",
    "OTEL_BSP_MAX_QUEUE_SIZE": "max_queue_size",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "max_export_batch_size",
    "OTEL_BSP_EXPORT_TIMEOUT": "export_timeout_millis",
}
_TRUE = ("true", "1", "yes", "on")

_lock = threading.Lock()
_installed: TracerProvider | None = None


def build_tracer_provider(
    service_name: str | None = None, *, exporter: str | None = None, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """The TracerProvider ``environ`` asks for, not installed anywhere; None when tracing is off.

    Args:
        service_name: ``service.name`` when neither ``OTEL_SERVICE_NAME`` nor
            ``OTEL_RESOURCE_ATTRIBUTES`` names one.
        exporter: Overrides ``OTEL_TRACES_EXPORTER`` (same syntax).
        environ: Where the ``OTEL_*`` variables are read.

    Raises:
        ValueError: an unknown exporter or protocol, or a non-integer ``OTEL_BSP_*``;
            the message names the variable.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return None
    names = _exporter_names(exporter, environ)
    if not names:
        return None
    exporters = [_exporter(name, environ) for name in names]
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: _service_name(service_name, environ)}))
    settings = _batch_settings(environ)
    for span_exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(span_exporter, **settings))
    return provider


def configure_tracing(
    service_name: str | None = None, *, exporter: str | None = None, environ: Mapping[str, str] = os.environ
) -> TracerProvider | None:
    """Builds the TracerProvider ``environ`` asks for and installs it as the global one.

    Call it once at start-up, before spans are made. Returns None, installing
    nothing, when tracing is off (see the module docstring), or when another
    TracerProvider is installed already (that one keeps working). A second call
    returns the provider the first one installed.

    Args:
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` (or
            ``OTEL_RESOURCE_ATTRIBUTES``) names one.
        exporter: Overrides ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console``, ``none``.
        environ: Where the ``OTEL_*`` variables are read.

    Raises:
        ValueError: invalid ``OTEL_*`` values, naming the variable.
    """
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        provider = build_tracer_provider(service_name, exporter=exporter, environ=environ)
        if provider is None:
            return None
        if not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            log.warning("a TracerProvider is installed already; loadwarden's tracing settings are not applied")
            provider.shutdown()
            return None
        trace.set_tracer_provider(provider)
        _installed = provider
        log.info(
            "tracing on: service %s, exporters %s",
            provider.resource.attributes.get(SERVICE_NAME),
            ", ".join(_exporter_names(exporter, environ)),
        )
        return provider


def shutdown_tracing(timeout_ms: int = 5_000) -> None:
    """Exports the spans still buffered, then stops the provider ``configure_tracing`` installed.

    Safe to call when tracing is off and more than once.
    """
    global _installed
    with _lock:
        provider, _installed = _installed, None
    if provider is None:
        return
    provider.force_flush(timeout_ms)
    provider.shutdown()


def _exporter_names(exporter: str | None, environ: Mapping[str, str]) -> list[str]:
    where = "exporter" if exporter is not None else "OTEL_TRACES_EXPORTER"
    raw = exporter if exporter is not None else environ.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    for name in names:
        if name not in EXPORTERS:
            raise ValueError(f"{where}: unknown trace exporter {name!r}; valid: {', '.join(EXPORTERS)}")
    if "none" in names:
        return []
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def _otlp_importable() -> Iterator[None]:
    """Names the known cause when the OTLP exporter cannot import its protos: xds-protos (the
    mesh extra) installed after opentelemetry-proto overwrote its modules with stale ones."""
    try:
        yield
    except ImportError as exc:
        if "InstrumentationScope" not in str(exc):
            raise
        raise ImportError(
            "the OTLP exporter cannot import opentelemetry-proto's modules: xds-protos (the mesh extra) "
            "ships a stale copy of them (grpc/grpc#42926) and was installed after it; reinstall it: "
            "pip install --force-reinstall --no-deps opentelemetry-proto"
        ) from exc


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip()
    traces_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if protocol == "grpc":
        with _otlp_importable():
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=traces_endpoint or endpoint or None)
    if protocol == "http/protobuf":
        with _otlp_importable():
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        if not traces_endpoint and endpoint:
            traces_endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=traces_endpoint or None)
    variable = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    raise ValueError(f"{variable}: unsupported OTLP protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")


def _service_name(default: str | None, environ: Mapping[str, str]) -> str:
    name = environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        return name
    for item in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == SERVICE_NAME and value.strip():
            return urllib.parse.unquote(value.strip())
    return default or "unknown_service"


def _batch_settings(environ: Mapping[str, str]) -> _BatchSettings:
    settings: _BatchSettings = {}
    for variable, parameter in _BSP_SETTINGS.items():
        raw = environ.get(variable)
        if raw is None or not raw.strip():
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{variable}: must be an integer, got {raw!r}") from None
        if value <= 0 and parameter != "export_timeout_millis":
            raise ValueError(f"{variable}: must be > 0, got {value}")
        settings[parameter] = value
    return settings
