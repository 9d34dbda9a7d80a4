"""`AsyncCache`, its stores `AsyncMemoryStore` and `AsyncRedisStore`, and their interface `AsyncStore`.

The source of `Cache`, `MemoryStore`, `RedisStore` and `Store` (generated into
`_sync/cache.py`). Keys, values, the in-process LRU, single flight and metrics are in
`loadwarden.sdk._cache`; this module only adds the calls that wait on a store.
"""

from __future__ import annotations

import functools
import logging
import math
import reprlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, cast

from loadwarden.sdk._cache.codec import Codec, JsonSerializer, Serializer, StoredError, Undecodable
from loadwarden.sdk._cache.errors import CacheValueError, StoreError
from loadwarden.sdk._cache.flight import AsyncFlights
from loadwarden.sdk._cache.keys import CallKeys, explicit_key
from loadwarden.sdk._cache.memory import LruTtl
from loadwarden.sdk._cache.metrics import CacheStats, Counts, observe_cache
from loadwarden.sdk._cache.redis_client import check_client, close_client_async, new_client_async, redis_errors
from loadwarden.sdk._cache.settings import ASYNC_STORE_IS_ASYNC, CacheSettings, StoreGate, check_store

if TYPE_CHECKING:  # a protocol of what the store calls (redis-py itself is optional: cache-redis)
    from loadwarden.sdk._cache.redis_client import AsyncRedisClient

T = TypeVar("T")
log = logging.getLogger("loadwarden.sdk.cache")
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60


class AsyncStore(Protocol):
    """Where an `AsyncCache` keeps its entries: bytes by key, each with a TTL.

    A store raises `StoreError` when its backend does not answer; the cache then
    computes without it. Anything else a store raises is a bug and reaches the caller.
    """

    async def get(self, key: str) -> bytes | None:
        """The entry of `key`; None when there is none or it has expired."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Keeps `value` under `key` for `ttl_s` seconds, replacing any entry."""
        ...

    async def delete(self, key: str) -> bool:
        """Drops the entry of `key`; whether there was one."""
        ...


class AsyncMemoryStore:
    """Entries in this process: at most `max_entries`, the least recently used evicted
    first, each expiring after its own TTL by `clock`. It never fails; thread-safe.

    Args:
        max_entries: Entries kept at most, count, >= 1.
        clock: Monotonic clock, seconds; tests pass a fake one to expire entries.

    Raises:
        ValueError: An argument is out of range.
    """

    def __init__(self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries = LruTtl(max_entries, clock)

    async def get(self, key: str) -> bytes | None:
        return self._entries.get(key)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries.set(key, value, ttl_s)

    async def delete(self, key: str) -> bool:
        return self._entries.delete(key)

    def clear(self) -> None:
        """Drops every entry."""
        self._entries.clear()

    @property
    def evictions(self) -> int:
        """Live entries evicted to make room so far."""
        return self._entries.evictions

    def __len__(self) -> int:
        return len(self._entries)


class AsyncRedisStore:
    """Entries in Redis, shared by every process on the same Redis (and key prefix): each
    one a Redis string that Redis expires itself (SET with PX, in milliseconds).

    A command that fails (Redis gone, timed out, refusing writes) raises `StoreError`,
    which the cache answers by computing. Bound Redis's memory with its own `maxmemory`
    and an eviction policy (`allkeys-lru`); the cache bounds each value
    (`max_value_bytes`).

    Args:
        client: A redis-py client of the store's flavour (asyncio or blocking), made with
            decode_responses=False (the default).
            Give it short timeouts and few retries (see `from_url`): a command waits as
            long as the client lets it.
        owns_client: Whether `close()` closes `client`.

    Raises:
        ValueError: `client` decodes responses.
        ImportError: redis-py is not installed (`pip install 'loadwarden[cache-redis]'`).
    """

    def __init__(self, client: AsyncRedisClient, *, owns_client: bool = False) -> None:
        check_client(client, "AsyncRedisStore")
        self._errors = redis_errors()
        self.client = client
        self._owns_client = owns_client

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.25) -> Self:
        """A store on a client of its own for `url` (`redis://host:6379/0`), whose commands
        fail within about 2 x `timeout_s` seconds when Redis is gone; `close()` closes it."""
        return cls(new_client_async(url, timeout_s), owns_client=True)

    async def get(self, key: str) -> bytes | None:
        try:
            data = await self.client.get(key)
        except self._errors as exc:
            raise StoreError(f"Redis GET failed: {type(exc).__name__}: {exc}") from exc
        return data if isinstance(data, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self.client.set(key, value, px=max(1, math.ceil(ttl_s * 1000)))
        except self._errors as exc:
            raise StoreError(f"Redis SET failed: {type(exc).__name__}: {exc}") from exc

    async def delete(self, key: str) -> bool:
        try:
            return bool(await self.client.delete(key))
        except self._errors as exc:
            raise StoreError(f"Redis DEL failed: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Closes the client if the store owns it (`from_url`, `owns_client=True`)."""
        if self._owns_client:
            await close_client_async(self.client)


class AsyncCache:
    """A cache of expensive results, on an in-process or a Redis store.

    `await cache.get_or_compute(key, compute)` returns the value cached under `key`,
    or awaits `compute()`, caches its result for `ttl_s` and returns it; concurrent
    misses of one key in this process compute once (single flight) and all get the
    result, or the exception. `@cached(cache)` does the same for each call of a
    function, keyed by its arguments. A store that fails never fails a call: the
    cache computes without it, counts it and logs it once. Use it from one event loop.

    Values are serialised by `serializer` before they are stored, so what a call
    returns is what the serializer gives back, on a miss as on a hit.

    Example:
        cache = AsyncCache(AsyncRedisStore.from_url("redis://127.0.0.1:6379/0"), key_prefix="ml_results", ttl_s=7200)
        result = await cache.get_or_compute(("classify", text), lambda: classify(text))

    Args:
        store: Where entries live; default an `AsyncMemoryStore()` (10,000 entries).
        key_prefix: Starts every key, 1-64 characters; caches sharing a store keep apart by it.
        ttl_s: How long an entry lives unless a call says otherwise, seconds, > 0.
        name: The cache's name in metrics and logs; default `key_prefix`.
        serializer: Turns values into bytes and back; default `JsonSerializer()`.
            `PickleSerializer()` keeps any picklable value: only for a store no one
            else can write to.
        cache_errors: Exception classes whose raising is cached as well, for
            `error_ttl_s`, and raised again on a hit as `cls(*args)`; by default no
            exception is cached.
        error_ttl_s: How long a cached exception lives, seconds, > 0.
        cache_none: Whether a None result is cached; when False it is computed each time.
        normalize_strings: Whether the strings of a key have their runs of whitespace
            collapsed to one space and are stripped (for the key only).
        max_value_bytes: Largest entry stored, bytes; a larger value is returned but not
            stored (counted as `too_large`, logged once). None: no limit.
        store_retry_s: After the store failed, how long calls compute without asking
            it, seconds, > 0.
        max_in_flight: Keys computed at once under single flight, count, >= 1; past it a
            caller computes without waiting for another.
        clock: Monotonic clock, seconds (for `store_retry_s`).

    Raises:
        ValueError: An argument is out of range; the message names it.
        TypeError: `store` is not a store of this flavour (its methods must be coroutines).
    """

    def __init__(
        self,
        store: AsyncStore | None = None,
        *,
        key_prefix: str = "loadwarden",
        ttl_s: float = 300.0,
        name: str | None = None,
        serializer: Serializer | None = None,
        cache_errors: Iterable[type[Exception]] = (),
        error_ttl_s: float = 30.0,
        cache_none: bool = True,
        normalize_strings: bool = True,
        max_value_bytes: int | None = 1_048_576,
        store_retry_s: float = 1.0,
        max_in_flight: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = CacheSettings(
            key_prefix=key_prefix,
            name=key_prefix if name is None else name,
            ttl_s=ttl_s,
            serializer=JsonSerializer() if serializer is None else serializer,
            cache_errors=tuple(cache_errors),
            error_ttl_s=error_ttl_s,
            cache_none=cache_none,
            normalize_strings=normalize_strings,
            max_value_bytes=max_value_bytes,
            store_retry_s=store_retry_s,
            max_in_flight=max_in_flight,
            clock=clock,
        )
        self._store: AsyncStore = AsyncMemoryStore() if store is None else store
        check_store(self._store, ASYNC_STORE_IS_ASYNC, "AsyncCache")
        self._codec = Codec(self._settings.serializer, self._settings.cache_errors)
        self._flights = AsyncFlights(max_in_flight)
        self._gate = StoreGate(self._settings.name, store_retry_s, clock)
        self._counts = Counts()
        self._warned: set[str] = set()  # kinds of problem logged already (a few names, bounded)
        observe_cache(self)

    @property
    def name(self) -> str:
        return self._settings.name

    @property
    def store(self) -> AsyncStore:
        return self._store

    async def get(self, key: Any, default: Any = None) -> Any:
        """The value cached under `key` (str, number, or a tuple, list or dict of those),
        or `default`; a cached exception is raised.

        Raises:
            CacheKeyError: `key` holds something that cannot be keyed.
        """
        found = await self._read(self._key(key))
        if found is None:
            self._counts.add("misses")
            return default
        self._counts.add("hits")
        return self._unwrap(found[1])

    async def set(self, key: Any, value: Any, *, ttl_s: float | None = None) -> bool:
        """Caches `value` under `key` for `ttl_s` seconds (default the cache's); whether it
        was stored (not when it is over `max_value_bytes` or the store failed).

        Raises:
            CacheValueError: The serializer cannot encode `value`; nothing was cached.
        """
        ttl = self._settings.ttl(ttl_s)
        return await self._write(self._key(key), self._encode(value, f"the value for key {_short.repr(key)}"), ttl)

    async def delete(self, key: Any) -> bool:
        """Drops the entry of `key`; whether there was one (False when the store failed)."""
        full_key = self._key(key)
        if not self._gate.open():
            return False
        try:
            deleted = await self._store.delete(full_key)
        except StoreError as exc:
            self._store_failed(exc)
            return False
        self._gate.answered()
        return deleted

    async def get_or_compute(self, key: Any, compute: Callable[[], Awaitable[T]], *, ttl_s: float | None = None) -> T:
        """The value cached under `key`, or `compute()`'s result, cached for `ttl_s` seconds
        (default the cache's). Concurrent misses of `key` await one `compute()`.

        Raises:
            CacheKeyError: `key` holds something that cannot be keyed.
            CacheValueError: The serializer cannot encode the result; nothing was cached.
            Exception: Whatever `compute()` raised (cached when it is one of `cache_errors`).
        """
        ttl = self._settings.ttl(ttl_s)
        return await self._fetch(self._key(key), compute, ttl, f"the result for key {_short.repr(key)}")

    def stats(self) -> CacheStats:
        """The counts so far: hits, misses, hit rate, computes, evictions, errors."""
        evictions = self._store.evictions if isinstance(self._store, AsyncMemoryStore) else 0
        return self._counts.snapshot(evictions, self._gate.available)

    def _decorate(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        ttl_s: float | None,
        key: Callable[..., Any] | None,
        ignore: Iterable[str],
        name: str | None,
    ) -> Callable[..., Awaitable[Any]]:
        """`fn` cached, for `loadwarden.sdk.cache.cached`."""
        settings = self._settings
        keys = CallKeys(
            fn, prefix=settings.key_prefix, name=name, key=key, ignore=ignore, normalize=settings.normalize_strings
        )
        ttl = settings.ttl(ttl_s)
        what = f"the result of {keys.name}"

        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._fetch(keys.build(args, kwargs), lambda: fn(*args, **kwargs), ttl, what)

        return call

    # ------------------------------------------------------------------ internals

    def _key(self, parts: Any) -> str:
        return explicit_key(self._settings.key_prefix, parts, normalize=self._settings.normalize_strings)

    async def _fetch(self, key: str, compute: Callable[[], Awaitable[T]], ttl_s: float, what: str) -> T:
        found = await self._read(key)
        if found is not None:
            self._counts.add("hits")
            return cast(T, self._unwrap(found[1]))
        self._counts.add("misses")
        entry = await self._flights.run(key, lambda: self._fill(key, compute, ttl_s, what))
        return cast(T, self._unwrap(self._codec.decode(entry)))

    async def _fill(self, key: str, compute: Callable[[], Awaitable[Any]], ttl_s: float, what: str) -> bytes:
        """The entry of `key`: the one stored since this caller's miss, or a new one."""
        found = await self._read(key)
        if found is not None:
            return found[0]
        self._counts.add("computes")
        try:
            value = await compute()
        except Exception as exc:
            if self._codec.caches(exc):
                error = self._codec.error(exc)
                if error is not None:
                    await self._write(key, error, self._settings.error_ttl_s)
                else:
                    self._warn(
                        "error_args",
                        "cache %s: not caching a %s raised for %s: its args cannot be serialised",
                        self.name,
                        type(exc).__qualname__,
                        what,
                    )
            raise
        entry = self._encode(value, what)
        if value is not None or self._settings.cache_none:
            await self._write(key, entry, ttl_s)
        return entry

    def _encode(self, value: Any, what: str) -> bytes:
        """`value`'s entry, read back once, so what cannot come back is never stored."""
        try:
            entry = self._codec.value(value, what)
            self._codec.decode(entry)
        except CacheValueError:
            self._counts.add("unserialisable")
            raise
        except Undecodable as exc:
            self._counts.add("unserialisable")
            raise CacheValueError(
                f"cannot cache {what}: {self._codec.serializer!r} cannot read back the "
                f"{type(value).__qualname__} it wrote ({exc}); nothing was cached"
            ) from exc
        return entry

    async def _read(self, key: str) -> tuple[bytes, Any] | None:
        """`key`'s entry and what it holds; None on a miss, a store failure or an unreadable entry."""
        if not self._gate.open():
            return None
        try:
            entry = await self._store.get(key)
        except StoreError as exc:
            self._store_failed(exc)
            return None
        self._gate.answered()
        if entry is None:
            return None
        try:
            return entry, self._codec.decode(entry)
        except Undecodable as exc:
            self._counts.add("decode_errors")
            self._warn("decode", "cache %s: unreadable entry %s (%s); computing it again", self.name, key, exc)
            return None

    async def _write(self, key: str, entry: bytes, ttl_s: float) -> bool:
        limit = self._settings.max_value_bytes
        if limit is not None and len(entry) > limit:
            self._counts.add("too_large")
            self._warn(
                "too_large",
                "cache %s: not storing %s: %d bytes is over max_value_bytes=%d (counted as too_large)",
                self.name,
                key,
                len(entry),
                limit,
            )
            return False
        if not self._gate.open():
            return False
        try:
            await self._store.set(key, entry, ttl_s)
        except StoreError as exc:
            self._store_failed(exc)
            return False
        self._gate.answered()
        return True

    def _store_failed(self, exc: StoreError) -> None:
        self._counts.add("store_errors")
        self._gate.failed(exc)

    def _warn(self, kind: str, message: str, *args: object) -> None:
        """Logs `message` the first time a problem of `kind` happens in this cache."""
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(message + " (logged once)", *args)

    @staticmethod
    def _unwrap(decoded: Any) -> Any:
        if isinstance(decoded, StoredError):
            raise decoded.error
        return decoded
