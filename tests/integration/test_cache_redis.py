"""The results cache on a real redis-server: two processes share hits, Redis expires the
entries, and a Redis that is killed mid-run costs computing, never a failed call."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from loadwarden.sdk.cache import AsyncCache, AsyncRedisStore, Cache, RedisStore, cached

from ..e2e._harness import REPO, Processes, RedisServer

_prefixes = itertools.count()


def new_prefix() -> str:
    return f"cache-test-{next(_prefixes)}-{time.monotonic_ns()}"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


# One application process: classifies the texts it is given, through the cache on Redis,
# and prints what it returned and its cache's counts.
APP = textwrap.dedent(
    """
    import json, sys

    from loadwarden.sdk.cache import Cache, RedisStore, cached

    url, prefix, *texts = sys.argv[1:]
    store = RedisStore.from_url(url)
    cache = Cache(store, key_prefix=prefix, ttl_s=7200)

    @cached(cache, name="demo.classify")
    def classify(text: str) -> dict:
        return {"label": "delay" if "delay" in text.lower() else "other", "words": len(text.split())}

    results = [classify(text) for text in texts]
    stats = cache.stats()
    print(json.dumps({"results": results, "hits": stats.hits, "computes": stats.computes}))
    store.close()
    """
)


def run_app(tmp_path: Path, url: str, prefix: str, *texts: str) -> dict[str, Any]:
    script = tmp_path / "app.py"
    script.write_text(APP, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), url, prefix, *texts],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_two_processes_share_hits_through_redis(redis_url: str, tmp_path: Path) -> None:
    prefix = new_prefix()
    texts = ["My package was delayed", "Where is my order?", "Refund please"]
    first = run_app(tmp_path, redis_url, prefix, *texts)
    assert (first["hits"], first["computes"]) == (0, 3)
    respelled = ["  My package   was delayed", "Where is my order? ", "Refund\tplease", "A new question"]
    second = run_app(tmp_path, redis_url, prefix, *respelled)
    assert second["results"][:3] == first["results"]
    assert (second["hits"], second["computes"]) == (3, 1)  # only the new text was computed
    keys = sorted(k.decode() for k in redis.Redis.from_url(redis_url).scan_iter(f"{prefix}:*"))
    assert keys[0] == f'{prefix}:demo.classify:{{"text":"A new question"}}' and len(keys) == 4


async def test_the_sync_and_async_stores_share_entries_that_redis_expires(redis_url: str) -> None:
    prefix = new_prefix()
    sync_store = RedisStore.from_url(redis_url)
    async_store = AsyncRedisStore.from_url(redis_url)
    try:
        sync_cache = Cache(sync_store, key_prefix=prefix, ttl_s=7200)
        async_cache = AsyncCache(async_store, key_prefix=prefix, ttl_s=7200)
        assert sync_cache.set(("classify", "hi"), {"label": "greeting"}, ttl_s=1.5)
        assert await async_cache.get(("classify", "hi")) == {"label": "greeting"}
        pttl = redis.Redis.from_url(redis_url).pttl(f'{prefix}:["classify","hi"]')
        assert 0 < pttl <= 1500  # SET ... PX: Redis expires it itself

        calls = 0

        @cached(async_cache)
        async def embed(text: str) -> list[float]:
            nonlocal calls
            calls += 1
            return [0.5, float(len(text))]

        assert await embed("abc") == await embed(" abc ") == [0.5, 3.0]
        assert calls == 1
        assert await async_cache.delete(("classify", "hi")) is True
        assert sync_cache.get(("classify", "hi")) is None
    finally:
        sync_store.close()
        await async_store.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and start again."""
    procs = Processes(tmp_path)
    server = procs.redis()
    yield server
    procs.close()


async def test_a_killed_redis_costs_computing_not_failures_and_the_cache_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    prefix = new_prefix()
    sync_store, async_store = RedisStore.from_url(own_redis.url), AsyncRedisStore.from_url(own_redis.url)
    sync_cache = Cache(sync_store, key_prefix=prefix, clock=clock, store_retry_s=1.0)
    async_cache = AsyncCache(async_store, key_prefix=prefix, name=prefix + "-async", clock=clock, store_retry_s=1.0)
    computed: list[str] = []

    @cached(sync_cache)
    def square(n: int) -> int:
        computed.append(f"sync {n}")
        return n * n

    @cached(async_cache)
    async def cube(n: int) -> int:
        computed.append(f"async {n}")
        return n**3

    try:
        assert (square(3), square(3), await cube(2), await cube(2)) == (9, 9, 8, 8)
        assert computed == ["sync 3", "async 2"]

        own_redis.kill()
        with caplog.at_level(logging.INFO, logger="loadwarden.sdk.cache"):
            started = time.monotonic()
            for _ in range(20):
                assert square(3) == 9
                assert await cube(2) == 8
            took_s = time.monotonic() - started
            assert computed.count("sync 3") == 21 and computed.count("async 2") == 21  # every call answered
            assert took_s < 5.0, took_s  # one failed round trip per store_retry_s, not one per call
            for cache in (sync_cache, async_cache):
                stats = cache.stats()
                assert not stats.store_available and stats.store_errors == 1

            own_redis.start()  # the same port, empty
            clock.now += 1.0  # store_retry_s later
            assert square(3) == 9 and await cube(2) == 8  # computed once more, and stored again
            assert square(3) == 9 and await cube(2) == 8  # hits
        assert computed.count("sync 3") == 22 and computed.count("async 2") == 22
        for cache in (sync_cache, async_cache):
            assert cache.stats().store_available
        assert caplog.text.count(f"cache {prefix}: store unavailable") == 1
        assert caplog.text.count(f"cache {prefix}-async: store unavailable") == 1
        assert caplog.text.count("store available again") == 2
        stored = [key.decode() for key in redis.Redis.from_url(own_redis.url).scan_iter(f"{prefix}:*")]
        assert sorted(stored) == [
            f'{prefix}:{fn.__module__}.{fn.__qualname__}:{{"n":{n}}}' for fn, n in ((cube, 2), (square, 3))
        ]  # stored again once Redis was back
    finally:
        sync_store.close()
        await async_store.close()
