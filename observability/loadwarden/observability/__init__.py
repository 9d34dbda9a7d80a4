"""Observability: configures logging, OpenTelemetry tracing and metrics, the admin HTTP port.
May import the OpenTelemetry SDK and aiohttp; nothing of loadwarden but what the service hands it.

``server/`` and ``sdk/`` only emit (``logging`` and the OpenTelemetry API); this package
is the one place that configures where the output goes.
"""

from ._logging import LEVELS as LOG_LEVELS
from ._logging import configure_logging
from ._tracing import build_tracer_provider, configure_tracing, shutdown_tracing

__all__ = ["LOG_LEVELS", "build_tracer_provider", "configure_logging", "configure_tracing", "shutdown_tracing"]
