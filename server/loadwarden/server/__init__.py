"""The loadwarden Decision service: the shell of grpc.aio, asyncio and config around the kernel.
May import loadwarden.policy, loadwarden.observability's public modules and the generated loadwarden.v1.

Run it with ``loadwarden serve``; embed it with ``start_service``.
"""

from loadwarden.policy import (
    Clock,
    ManualClock,
    OperationSettings,
    OutlierSettings,
    PoolSettings,
    RateLimit,
    ServerSpec,
    SystemClock,
)

from . import _needs  # noqa: F401 - imported for its check: names the missing extra first
from ._errors import ConfigError
from .app._cli import main
from .app._config import AdminSettings, MonitorSettings, PoolSpec, ServiceConfig, StateSettings, load_config
from .app._service import RunningService, serve, start_service
from .engine._core import CoreLimits, DecisionCore
from .engine._health_checks import HealthCheckSettings
from .rpc._auth import AuthSettings
from .rpc._tls import TlsSettings

__all__ = [
    "AdminSettings",
    "AuthSettings",
    "Clock",
    "ConfigError",
    "CoreLimits",
    "DecisionCore",
    "HealthCheckSettings",
    "ManualClock",
    "MonitorSettings",
    "OperationSettings",
    "OutlierSettings",
    "PoolSettings",
    "PoolSpec",
    "RateLimit",
    "RunningService",
    "ServerSpec",
    "ServiceConfig",
    "StateSettings",
    "SystemClock",
    "TlsSettings",
    "load_config",
    "main",
    "serve",
    "start_service",
]
