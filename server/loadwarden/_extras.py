"""What the service needs beyond the SDK: the ``server`` extra, and how to say it is missing.

Imports nothing of loadwarden: the ``loadwarden`` command (``loadwarden._command``) and
``loadwarden.server`` both check with it before importing the service.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Sequence

EXTRA = "server"
INSTALL = f"pip install 'loadwarden[{EXTRA}]'"

# The distributions of the `server` extra (pyproject.toml), each with a module it provides.
SERVER_NEEDS = (
    ("grpcio-reflection", "grpc_reflection"),
    ("opentelemetry-sdk", "opentelemetry.sdk"),
    ("opentelemetry-exporter-otlp-proto-grpc", "opentelemetry.exporter.otlp.proto.grpc"),
    ("opentelemetry-exporter-otlp-proto-http", "opentelemetry.exporter.otlp.proto.http"),
    ("opentelemetry-exporter-prometheus", "opentelemetry.exporter.prometheus"),
    ("prometheus-client", "prometheus_client"),
    ("aiohttp", "aiohttp"),
    ("pydantic", "pydantic"),
)


def missing_for_server() -> list[str]:
    """The distributions of the ``server`` extra that are not installed."""
    missing = []
    for distribution, _module in SERVER_NEEDS:
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            missing.append(distribution)
    return missing


def server_extra_message(what: str, missing: Sequence[str]) -> str:
    return f"{what} needs the {EXTRA!r} extra, which is not installed (missing: {', '.join(missing)}): {INSTALL}"


def require_server(what: str) -> None:
    """Raises ModuleNotFoundError naming the extra when the service's needs are missing."""
    missing = missing_for_server()
    if missing:
        raise ModuleNotFoundError(server_extra_message(what, missing), name=missing[0])
