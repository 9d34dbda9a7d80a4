"""State shared by several replicas of the service, on Redis (``[state] store = "redis"``).

The ``redis`` extra installs redis-py; nothing here imports it until a Redis store is
configured, so ``loadwarden serve`` on the memory store needs none of it.
"""

from ._admission import SharedAdmission
from ._redis import REDIS_KEYS, RedisSettings, SharedRedis, connect, parse_redis, redacted

__all__ = [
    "REDIS_KEYS",
    "RedisSettings",
    "SharedAdmission",
    "SharedRedis",
    "connect",
    "parse_redis",
    "redacted",
]
