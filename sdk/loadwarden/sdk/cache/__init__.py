"""A results cache for expensive calls: `@cached(cache)` and `cache.get_or_compute(...)`,
sync (`Cache`) and asyncio (`AsyncCache`), in process or on Redis.
May import the rest of loadwarden.sdk and cachetools; redis-py only for the Redis stores.

Example:
    from loadwarden.sdk.cache import Cache, RedisStore, cached

    cache = Cache(RedisStore.from_url("redis://127.0.0.1:6379/0"), key_prefix="ml_results", ttl_s=7200)

    @cached(cache)
    def classify(text: str) -> dict[str, float]:
        return model.predict(text)

    classify("My package  was delayed")  # computed, kept for 2 hours
    classify(text="My package was delayed ")  # a hit: the same key
    print(cache.stats())  # "1 hits, 1 misses (50.0% hit rate), 1 computes, 0 evictions"

Keys. A call's arguments are bound to the function's signature (defaults applied), so
`f(1, b=2)` and `f(b=2, a=1)` are one key; dicts key alike whatever their order; strings
have their runs of whitespace collapsed and are stripped (`normalize_strings=False` turns
that off). A key reads `prefix:module.function:{"text":"..."}` up to 200 characters, and is
`prefix:module.function:#<sha256>` beyond. An argument that cannot be keyed (an object, a
dict with int keys) raises `CacheKeyError` naming it; pass `key=` or `ignore=`.

Values are serialised (JSON by default) on the way in and read back on the way out, on
a miss as on a hit: a value the serializer cannot encode raises `CacheValueError`
and nothing is cached. `PickleSerializer` is opt-in, for a store no one else writes to.
A value over `max_value_bytes` (1 MiB) is returned but not stored: it is an operational
limit, not a mistake in the call, so it is counted and logged, never raised.

Stores. `MemoryStore` (`AsyncMemoryStore`): this process only, LRU over `max_entries` with
a TTL per entry, on an injectable clock (cachetools' TLRUCache under a lock).
`RedisStore` (`AsyncRedisStore`): every process on one Redis shares the entries; Redis
expires them (PX). When Redis fails, calls compute without it (counted, logged once)
and the cache asks it again every `store_retry_s`. There is no Django store: Django's cache
API has no single flight, cannot tell a dead backend from a miss (django-redis raises or,
with IGNORE_EXCEPTIONS, answers None), pickles what it stores, and exists only under
Django, while this cache also serves Celery workers and asyncio services. A Django app
points a `RedisStore` at the Redis of its CACHES with the same KEY_PREFIX and TIMEOUT.

Single flight. Concurrent misses of one key in one process compute once; the others
wait and get the result, or the same exception. Exceptions are not cached unless they
are one of `cache_errors` (then for `error_ttl_s`); None is cached unless `cache_none=False`.

Metrics (OpenTelemetry API): `loadwarden.sdk.cache.hits`, `.misses`, `.computes`,
`.evictions`, `.errors` (by `reason`) and the gauge `.hit_ratio`, by `cache` name; the
same counts from `cache.stats()`.
"""

from loadwarden.sdk._async.cache import AsyncCache, AsyncMemoryStore, AsyncRedisStore, AsyncStore
from loadwarden.sdk._cache.codec import JsonSerializer, PickleSerializer, Serializer
from loadwarden.sdk._cache.decorator import cached
from loadwarden.sdk._cache.errors import CacheError, CacheKeyError, CacheValueError, StoreError
from loadwarden.sdk._cache.metrics import CacheStats
from loadwarden.sdk._sync.cache import Cache, MemoryStore, RedisStore, Store

__all__ = [
    "AsyncCache",
    "AsyncMemoryStore",
    "AsyncRedisStore",
    "AsyncStore",
    "Cache",
    "CacheError",
    "CacheKeyError",
    "CacheStats",
    "CacheValueError",
    "JsonSerializer",
    "MemoryStore",
    "PickleSerializer",
    "RedisStore",
    "Serializer",
    "Store",
    "StoreError",
    "cached",
]
