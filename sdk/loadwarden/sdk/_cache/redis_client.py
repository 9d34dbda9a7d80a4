"""What the Redis stores need from redis-py, which comes with the `cache-redis` extra, not
with the SDK: the client types (for type checkers only), clients with short timeouts, the
errors that mean "Redis did not answer"."""

from __future__ import annotations

from typing import Any, Protocol


# What the stores call, as protocols rather than redis-py's own classes: redis-py is
# optional, so an application without it (and a type checker looking at the bare SDK)
# still sees every type. redis.Redis and redis.asyncio.Redis fit them.
class RedisClient(Protocol):
    """A blocking redis-py client (`redis.Redis`), as far as `RedisStore` uses it."""

    def get(self, name: str) -> Any: ...
    def set(self, name: str, value: bytes, *, px: int) -> Any: ...
    def delete(self, *names: str) -> Any: ...
    def close(self) -> None: ...


class AsyncRedisClient(Protocol):
    """An asyncio redis-py client (`redis.asyncio.Redis`), as far as `AsyncRedisStore` uses it."""

    def get(self, name: str) -> Any: ...
    def set(self, name: str, value: bytes, *, px: int) -> Any: ...
    def delete(self, *names: str) -> Any: ...
    async def aclose(self) -> None: ...


def _redis_py(what: str) -> None:
    try:
        import redis  # noqa: F401 - only whether it is installed
    except ImportError:
        raise ImportError(f"{what} needs redis-py: pip install 'loadwarden[cache-redis]'") from None


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a redis-py call raises when Redis did not answer it (or refused it)."""
    _redis_py("RedisStore")
    from redis.exceptions import RedisError

    return (RedisError, OSError)


def check_client(client: object, what: str) -> None:
    """Raises ValueError for a client that decodes responses (the stores keep bytes)."""
    kwargs = getattr(client, "get_connection_kwargs", None)
    if callable(kwargs) and kwargs().get("decode_responses"):
        raise ValueError(f"{what} needs a client made with decode_responses=False: it stores bytes")


def new_client_async(url: str, timeout_s: float) -> AsyncRedisClient:
    """A redis-py asyncio client for `url` whose calls fail within about 2 x `timeout_s`
    when Redis is gone (one retry, no backoff; redis-py's default retries for seconds)."""
    _redis_py("AsyncRedisStore.from_url")
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
    )


def new_client(url: str, timeout_s: float) -> RedisClient:
    """A blocking redis-py client for `url`; see `new_client_async`."""
    _redis_py("RedisStore.from_url")
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
    )


async def close_client_async(client: AsyncRedisClient) -> None:
    await client.aclose()


def close_client(client: RedisClient) -> None:
    client.close()
