"""A cache's settings, checked once when the cache is made, and its view of its store's health."""

from __future__ import annotations

import inspect
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from loadwarden.sdk._cache.codec import Serializer
from loadwarden.sdk._cache.keys import MAX_PREFIX_LENGTH

log = logging.getLogger("loadwarden.sdk.cache")

# Whether the stores a cache is given must have coroutine methods: AsyncCache's, Cache's.
ASYNC_STORE_IS_ASYNC = True
STORE_IS_ASYNC = False


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")


@dataclass(frozen=True)
class CacheSettings:
    """What `AsyncCache(...)` and `Cache(...)` are given; see `AsyncCache` for each field.

    Raises:
        ValueError: A field is out of range; the message names it.
    """

    key_prefix: str
    name: str
    ttl_s: float
    serializer: Serializer
    cache_errors: tuple[type[BaseException], ...]
    error_ttl_s: float
    cache_none: bool
    normalize_strings: bool
    max_value_bytes: int | None
    store_retry_s: float
    max_in_flight: int
    clock: Callable[[], float]

    def __post_init__(self) -> None:
        if not isinstance(self.key_prefix, str) or not 0 < len(self.key_prefix) <= MAX_PREFIX_LENGTH:
            raise ValueError(
                f"key_prefix must be a str of 1 to {MAX_PREFIX_LENGTH} characters, got {self.key_prefix!r}"
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        _positive("ttl_s", self.ttl_s)
        _positive("error_ttl_s", self.error_ttl_s)
        _positive("store_retry_s", self.store_retry_s)
        for cls in self.cache_errors:
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                raise ValueError(f"cache_errors must hold Exception classes, got {cls!r}")
        if not all(callable(getattr(self.serializer, method, None)) for method in ("dumps", "loads")):
            raise ValueError(f"serializer must have dumps and loads, got {self.serializer!r}")
        if self.max_value_bytes is not None and not _is_count(self.max_value_bytes):
            raise ValueError(f"max_value_bytes must be an int >= 1 or None, got {self.max_value_bytes!r}")
        if not _is_count(self.max_in_flight):
            raise ValueError(f"max_in_flight must be an int >= 1, got {self.max_in_flight!r}")
        if not callable(self.clock):
            raise ValueError(f"clock must be a function returning seconds, got {self.clock!r}")

    def ttl(self, ttl_s: float | None, what: str = "ttl_s") -> float:
        """`ttl_s` checked, or the cache's default when None."""
        if ttl_s is None:
            return self.ttl_s
        _positive(what, ttl_s)
        return ttl_s


def check_store(store: object, is_async: bool, cache: str) -> None:
    """Raises TypeError when `store` lacks get/set/delete, or they are not coroutines for
    `AsyncCache` (or are for `Cache`)."""
    for method in ("get", "set", "delete"):
        fn = getattr(store, method, None)
        if not callable(fn):
            raise TypeError(f"{cache}: the store {store!r} has no {method}() method")
        if inspect.iscoroutinefunction(fn) != is_async:
            fits = "AsyncMemoryStore or AsyncRedisStore" if is_async else "MemoryStore or RedisStore"
            raise TypeError(
                f"{cache} needs a store whose methods are {'coroutines' if is_async else 'plain functions'}; "
                f"{type(store).__qualname__}.{method} is {'not ' if is_async else ''}a coroutine function "
                f"({cache} takes e.g. {fits})"
            )


class StoreGate:
    """Whether to ask the store now: not for `retry_s` after it failed, so a dead Redis
    costs one failed call per `retry_s`, not one per request. Logs the first failure and
    the recovery, once each; thread-safe."""

    def __init__(self, cache: str, retry_s: float, clock: Callable[[], float]) -> None:
        self._cache = cache
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._down_until: float | None = None

    @property
    def available(self) -> bool:
        """False from a failure until the store answers again."""
        return self._down_until is None

    def open(self) -> bool:
        """Whether a call may ask the store now."""
        down_until = self._down_until
        return down_until is None or self._clock() >= down_until

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            first = self._down_until is None
            self._down_until = self._clock() + self._retry_s
        if first:
            log.warning(
                "cache %s: store unavailable (%s); computing without it, trying it again every %g s",
                self._cache,
                exc,
                self._retry_s,
            )

    def answered(self) -> None:
        if self._down_until is None:
            return
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
        if was_down:
            log.info("cache %s: store available again", self._cache)
