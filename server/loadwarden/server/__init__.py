"""The loadwarden Decision service.

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

from ._auth import AuthSettings
from ._config import AdminSettings, MonitorSettings, PoolSpec, ServiceConfig, StateSettings, load_config
from ._core import CoreLimits, DecisionCore
from ._errors import ConfigError
from ._service import RunningService, serve, start_service
from ._tls import TlsSettings

__all__ = [
    "AdminSettings",
    "AuthSettings",
    "Clock",
    "ConfigError",
    "CoreLimits",
    "DecisionCore",
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
    "serve",
    "start_service",
]
