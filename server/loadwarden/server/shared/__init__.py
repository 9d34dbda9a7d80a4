"""State shared by several replicas of the service, on Redis (``[state] store = "redis"``).

The ``redis`` extra installs redis-py; nothing here imports it until a Redis store is
configured, so ``loadwarden serve`` on the memory store needs none of it.
"""

from ._admission import Outage, SharedAdmission, StoreUnavailable
from ._peers import Peers
from ._redis import (
    FAILURE_MODES,
    REDIS_KEYS,
    RedisSettings,
    SharedRedis,
    connect,
    host_port,
    parse_redis,
    redacted,
    sync_client,
)

__all__ = [
    "FAILURE_MODES",
    "REDIS_KEYS",
    "Outage",
    "Peers",
    "RedisSettings",
    "SharedAdmission",
    "SharedRedis",
    "StoreUnavailable",
    "connect",
    "host_port",
    "parse_redis",
    "redacted",
    "sync_client",
]
