"""The loadwarden Decision service.

Run it with ``loadwarden serve``; embed it with ``start_service``.
"""

from ._clock import Clock, ManualClock, SystemClock
from ._config import PoolSpec, ServiceConfig, load_config
from ._core import CoreLimits, DecisionCore
from ._errors import ConfigError
from ._model import ServerSpec
from ._service import RunningService, serve, start_service
from ._settings import PoolSettings

__all__ = [
    "Clock",
    "ConfigError",
    "CoreLimits",
    "DecisionCore",
    "ManualClock",
    "PoolSettings",
    "PoolSpec",
    "RunningService",
    "ServerSpec",
    "ServiceConfig",
    "SystemClock",
    "load_config",
    "serve",
    "start_service",
]
