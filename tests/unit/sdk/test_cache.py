"""The results cache in process: TTL and LRU on a fake clock, single flight, the
negative-result policy, values that cannot be cached, the decorator, a failing store.

No sockets and no sleeping: time moves by a fake clock, and concurrent callers are
released once every one of them is known to have missed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import loadwarden.sdk.cache
from loadwarden.sdk.cache import (
    AsyncCache,
    AsyncMemoryStore,
    Cache,
    CacheValueError,
    MemoryStore,
    PickleSerializer,
    StoreError,
    cached,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counter:
    """A compute function that counts its calls and returns `value(n)` for the n-th."""

    def __init__(self, value: Callable[[int], Any] = lambda n: {"n": n}) -> None:
        self.calls = 0
        self._value = value

    def __call__(self) -> Any:
        self.calls += 1
        return self._value(self.calls)


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.001)


def test_the_public_names_are_pinned() -> None:
    assert set(loadwarden.sdk.cache.__all__) == {
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
    }


# ------------------------------------------------------------------ TTL and LRU


def test_an_entry_expires_after_its_own_ttl_on_the_injected_clock() -> None:
    clock = Clock()
    cache = Cache(MemoryStore(clock=clock), ttl_s=7200)
    compute = Counter()
    assert cache.get_or_compute("a", compute) == {"n": 1}
    assert cache.get_or_compute("b", compute, ttl_s=10) == {"n": 2}
    clock.now += 9.9
    assert cache.get_or_compute("b", compute) == {"n": 2}  # within its own 10 s
    clock.now += 0.1
    assert cache.get_or_compute("b", compute) == {"n": 3}  # expired at 10 s
    clock.now += 7200 - 10
    assert cache.get("a") is None  # the default 7200 s are over too
    assert compute.calls == 3


def test_the_least_recently_used_entry_is_evicted_and_counted() -> None:
    clock = Clock()
    store = MemoryStore(max_entries=2, clock=clock)
    cache = Cache(store)
    cache.set("a", 1)
    cache.set("b", 2)
    assert cache.get("a") == 1  # b is now the least recently used
    cache.set("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(store) == 2 and cache.stats().evictions == 1


def test_an_expired_entry_makes_room_without_counting_as_an_eviction() -> None:
    clock = Clock()
    store = MemoryStore(max_entries=2, clock=clock)
    cache = Cache(store)
    cache.set("short", 1, ttl_s=5)
    cache.set("long", 2, ttl_s=60)
    clock.now += 6
    cache.set("new", 3)
    assert (cache.get("short"), cache.get("long"), cache.get("new")) == (None, 2, 3)
    assert cache.stats().evictions == 0


# ---------------------------------------------------------------- single flight


async def test_200_concurrent_identical_misses_compute_once_on_the_async_cache() -> None:
    cache = AsyncCache(AsyncMemoryStore())
    release = asyncio.Event()
    calls = 0

    async def compute() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"answer": 42}

    tasks = [asyncio.create_task(cache.get_or_compute("same", compute)) for _ in range(200)]
    while cache.stats().misses < 200:
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert results == [{"answer": 42}] * 200
    assert len({id(result) for result in results}) == 200  # each caller its own copy
    stats = cache.stats()
    assert (stats.misses, stats.computes, stats.hits) == (200, 1, 0)
    assert await cache.get_or_compute("same", compute) == {"answer": 42} and cache.stats().hits == 1


def test_200_concurrent_identical_misses_compute_once_on_the_sync_cache() -> None:
    cache = Cache(MemoryStore())
    release = threading.Event()
    calls = 0
    calls_lock = threading.Lock()

    def compute() -> str:
        nonlocal calls
        with calls_lock:
            calls += 1
        assert release.wait(30)
        return "value"

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("same", compute))) for _ in range(200)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: cache.stats().misses == 200, "every thread missed")
    release.set()
    for thread in threads:
        thread.join(30)
    assert calls == 1 and results == ["value"] * 200
    assert cache.stats().computes == 1


async def test_waiters_get_the_same_exception_and_nothing_is_cached() -> None:
    cache = AsyncCache()
    release = asyncio.Event()
    failure = RuntimeError("model crashed")
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        raise failure

    tasks = [asyncio.create_task(cache.get_or_compute("k", compute)) for _ in range(20)]
    while cache.stats().misses < 20:
        await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert calls == 1 and all(outcome is failure for outcome in outcomes)
    with pytest.raises(RuntimeError):
        await cache.get_or_compute("k", compute)
    assert calls == 2  # not cached: computed again


async def test_a_cancelled_first_caller_hands_the_computation_to_a_waiter() -> None:
    cache = AsyncCache()
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def compute() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return f"run {calls}"

    first = asyncio.create_task(cache.get_or_compute("k", compute))
    await started.wait()
    waiter = asyncio.create_task(cache.get_or_compute("k", compute))
    while cache.stats().misses < 2:
        await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await waiter == "run 2"


def test_past_max_in_flight_callers_compute_without_waiting() -> None:
    cache = Cache(max_in_flight=1)
    release = threading.Event()
    computed: list[str] = []

    def slow() -> str:
        computed.append("slow")
        assert release.wait(30)
        return "slow"

    thread = threading.Thread(target=lambda: cache.get_or_compute("a", slow))
    thread.start()
    wait_until(lambda: computed == ["slow"], "the first key is in flight")
    assert cache.get_or_compute("b", lambda: "b") == "b"  # a second key does not wait for room
    release.set()
    thread.join(30)


# --------------------------------------------------------- negative results


def test_exceptions_are_not_cached_by_default() -> None:
    cache = Cache()
    calls = Counter()

    def failing() -> None:
        calls()
        raise KeyError("no such user")

    for _ in range(2):
        with pytest.raises(KeyError):
            cache.get_or_compute("u", failing)
    assert calls.calls == 2 and cache.stats().computes == 2


def test_cache_errors_are_cached_for_error_ttl_and_raised_again() -> None:
    clock = Clock()
    cache = Cache(MemoryStore(clock=clock), cache_errors=(LookupError,), error_ttl_s=30)
    calls = Counter()

    def missing_user() -> None:
        calls()
        raise KeyError("no such user")

    with pytest.raises(KeyError) as first:
        cache.get_or_compute("u", missing_user)
    with pytest.raises(KeyError) as again:
        cache.get_or_compute("u", missing_user)
    assert calls.calls == 1 and cache.stats().hits == 1
    assert again.value.args == first.value.args and again.value is not first.value
    assert "a cached error" in "".join(again.value.__notes__)
    clock.now += 30
    with pytest.raises(KeyError):
        cache.get_or_compute("u", missing_user)
    assert calls.calls == 2  # error_ttl_s passed

    def other_failure() -> None:
        raise ValueError("not a LookupError")

    for _ in range(2):
        with pytest.raises(ValueError, match="not a LookupError"):
            cache.get_or_compute("v", other_failure)
    assert cache.stats().computes == 4


def test_none_is_cached_unless_cache_none_is_false() -> None:
    for cache_none, calls_expected in ((True, 1), (False, 3)):
        cache = Cache(cache_none=cache_none)
        calls = Counter(lambda n: None)
        for _ in range(3):
            assert cache.get_or_compute("k", calls) is None
        assert calls.calls == calls_expected


# -------------------------------------------------------------------- values


def test_a_value_that_cannot_be_serialised_is_a_clear_error_and_nothing_is_cached() -> None:
    store = MemoryStore()
    cache = Cache(store)
    calls = Counter(lambda n: {"point": Point(n)})
    for _ in range(2):
        with pytest.raises(CacheValueError) as raised:
            cache.get_or_compute(("point", 1), calls)
    message = str(raised.value)
    assert "JsonSerializer() cannot serialise a builtins.dict" in message
    assert "Object of type Point is not JSON serializable" in message
    assert "serializer=PickleSerializer()" in message
    assert isinstance(raised.value, TypeError)
    assert len(store) == 0 and calls.calls == 2 and cache.stats().unserialisable == 2
    with pytest.raises(CacheValueError):
        cache.set("p", Point(1))
    assert len(store) == 0


def test_a_pickle_cache_keeps_objects_and_json_gives_back_what_it_stores() -> None:
    pickled = Cache(serializer=PickleSerializer())
    assert pickled.get_or_compute("p", lambda: Point(3)).x == 3
    assert pickled.get_or_compute("p", lambda: Point(4)).x == 3

    cache = Cache()
    first = cache.get_or_compute("t", lambda: {"pair": (1, 2), 7: "seven"})
    assert first == cache.get_or_compute("t", lambda: None) == {"pair": [1, 2], "7": "seven"}  # on the miss too


def test_a_value_over_max_value_bytes_is_returned_not_stored_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    cache = Cache(store, max_value_bytes=100)
    big = "x" * 200
    with caplog.at_level(logging.WARNING, logger="loadwarden.sdk.cache"):
        assert cache.get_or_compute("big", lambda: big) == big
        assert cache.get_or_compute("big", lambda: big) == big
        assert cache.set("big", big) is False
    assert len(store) == 0 and cache.stats().too_large == 3 and cache.stats().computes == 2
    assert caplog.text.count("over max_value_bytes=100") == 1


def test_an_unreadable_entry_is_a_miss_and_is_replaced() -> None:
    store = MemoryStore()
    cache = Cache(store, key_prefix="p")
    store.set('p:"k"', b"not an entry", 60)
    assert cache.get_or_compute("k", lambda: 5) == 5
    assert cache.get("k") == 5
    assert cache.stats().decode_errors == 2  # read on the miss, and again inside the single flight


# ----------------------------------------------------------------- decorator


def test_the_decorator_caches_a_sync_function_by_its_arguments() -> None:
    cache = Cache()
    calls: list[str] = []

    @cached(cache, ttl_s=7200)
    def classify(text: str, model: str = "small") -> dict[str, str]:
        """Classifies."""
        calls.append(text)
        return {"text": text, "model": model}

    assert classify("My package  was delayed") == {"text": "My package  was delayed", "model": "small"}
    assert classify(text=" My package was delayed", model="small")["text"] == "My package  was delayed"
    assert classify("another") and calls == ["My package  was delayed", "another"]
    assert classify.__name__ == "classify" and classify.__doc__ == "Classifies."
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (1, 2, 1 / 3)


async def test_the_decorator_caches_an_async_function_and_a_method() -> None:
    cache = AsyncCache()

    class Service:
        def __init__(self) -> None:
            self.calls = 0

        @cached(cache, ignore=("self",))
        async def predict(self, text: str) -> str:
            self.calls += 1
            await asyncio.sleep(0)
            return text.upper()

    a, b = Service(), Service()
    assert await a.predict("hi") == "HI"
    assert await b.predict(text="hi") == "HI"  # another instance, the same key
    assert (a.calls, b.calls) == (1, 0)


def test_the_decorator_refuses_a_function_of_the_other_flavour() -> None:
    async def fetch() -> int:
        return 1

    def compute() -> int:
        return 1

    def numbers() -> Any:
        yield 1

    with pytest.raises(TypeError, match="use an AsyncCache"):
        cached(Cache())(fetch)
    with pytest.raises(TypeError, match="needs an async def function"):
        cached(AsyncCache())(compute)  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(TypeError, match="generator function"):
        cached(Cache())(numbers)
    with pytest.raises(TypeError, match="needs an AsyncCache or a Cache"):
        cached(object())  # type: ignore[call-overload]  # the mistake under test
    with pytest.raises(TypeError, match="AsyncCache needs a store whose methods are coroutines"):
        AsyncCache(MemoryStore())  # type: ignore[arg-type]  # the mistake under test
    with pytest.raises(TypeError, match="Cache needs a store whose methods are plain functions"):
        Cache(AsyncMemoryStore())  # type: ignore[arg-type]  # the mistake under test


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"ttl_s": 0}, "ttl_s"),
        ({"error_ttl_s": float("nan")}, "error_ttl_s"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "p" * 65}, "key_prefix"),
        ({"max_value_bytes": 0}, "max_value_bytes"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"cache_errors": (KeyboardInterrupt,)}, "cache_errors"),
        ({"serializer": object()}, "serializer"),
    ],
)
def test_bad_settings_are_refused_by_name(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named} "):
        Cache(**options)


# ---------------------------------------------------------------- a failing store


class FlakyStore:
    """A memory store that raises StoreError while `down`; counts the calls that reach it."""

    def __init__(self) -> None:
        self.entries = MemoryStore()
        self.down = False
        self.calls = 0

    def _reach(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreError("connection refused")

    def get(self, key: str) -> bytes | None:
        self._reach()
        return self.entries.get(key)

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._reach()
        self.entries.set(key, value, ttl_s)

    def delete(self, key: str) -> bool:
        self._reach()
        return self.entries.delete(key)


def test_a_failing_store_degrades_to_computing_logs_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    store = FlakyStore()
    cache = Cache(store, store_retry_s=1.0, clock=clock)
    calls = Counter(lambda n: n)
    assert cache.get_or_compute("k", calls) == 1
    store.down = True
    with caplog.at_level(logging.INFO, logger="loadwarden.sdk.cache"):
        reached = store.calls
        assert [cache.get_or_compute("k", calls) for _ in range(5)] == [2, 3, 4, 5, 6]
        assert store.calls == reached + 1  # one failed GET, then the store is left alone for 1 s
        assert cache.delete("k") is False and cache.set("k", 0) is False
        assert not cache.stats().store_available
        clock.now += 1.0
        assert cache.get_or_compute("k", calls) == 7  # tried again: failed again
        store.down = False
        clock.now += 1.0
        assert cache.get_or_compute("k", calls) == 1  # back: the entry from before the outage
    assert caplog.text.count("store unavailable") == 1
    assert caplog.text.count("store available again") == 1
    stats = cache.stats()
    assert stats.store_available and stats.store_errors == 2 and stats.computes == 7


def test_a_bug_in_a_store_is_not_hidden() -> None:
    class Broken(FlakyStore):
        def get(self, key: str) -> bytes | None:
            raise AttributeError("a bug")

    with pytest.raises(AttributeError, match="a bug"):
        Cache(Broken()).get_or_compute("k", lambda: 1)


# ------------------------------------------------------------- explicit API, stores


def test_get_set_delete_keep_to_their_key() -> None:
    cache = Cache()
    missing = object()
    assert cache.get(("user", 1), missing) is missing
    assert cache.set(("user", 1), {"name": "Ada"}) is True
    assert cache.get(("user", 1)) == {"name": "Ada"} and cache.get(("user", 2)) is None
    assert cache.delete(("user", 1)) is True and cache.delete(("user", 1)) is False
    assert cache.get(("user", 1), missing) is missing


def test_a_redis_client_that_decodes_responses_is_refused() -> None:
    import redis
    import redis.asyncio

    from loadwarden.sdk.cache import AsyncRedisStore, RedisStore

    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore(redis.Redis(decode_responses=True))
    with pytest.raises(ValueError, match="decode_responses=False"):
        AsyncRedisStore(redis.asyncio.Redis(decode_responses=True))
