"""A cache's counts, read by `cache.stats()` and by OpenTelemetry instruments (the API only).

Each cache counts under a lock; the instruments are observable and read those counts
when a MeterProvider collects, so a lookup pays for no instrument. Caches of one `name`
are summed into one series (attribute `cache`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import metrics

_meter = metrics.get_meter("loadwarden.sdk")


@dataclass(frozen=True)
class CacheStats:
    """What a cache has done since it was made.

    Attributes:
        hits: Calls answered from the store (a cached error counts too).
        misses: Calls that found nothing usable in the store; each computed, or waited
            for another caller's computation of the same key.
        computes: Calls of the compute function (at most one per key at a time).
        evictions: Entries the in-process store evicted to make room; 0 for Redis (it
            evicts by its own policy: see its `evicted_keys`).
        store_errors: Store calls that failed (the call was answered by computing).
        decode_errors: Stored entries that could not be read (treated as misses).
        too_large: Values not stored for being over `max_value_bytes`.
        unserialisable: Values the serializer refused (`CacheValueError` raised).
        store_available: False while the store is failing.
    """

    hits: int = 0
    misses: int = 0
    computes: int = 0
    evictions: int = 0
    store_errors: int = 0
    decode_errors: int = 0
    too_large: int = 0
    unserialisable: int = 0
    store_available: bool = True

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def __str__(self) -> str:
        return (
            f"{self.hits} hits, {self.misses} misses ({self.hit_rate:.1%} hit rate), {self.computes} computes, "
            f"{self.evictions} evictions"
        )


_FIELDS = ("hits", "misses", "computes", "store_errors", "decode_errors", "too_large", "unserialisable")


class Counts:
    """A cache's counters; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_FIELDS, 0)

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            self._counts[field] += n

    def snapshot(self, evictions: int, store_available: bool) -> CacheStats:
        with self._lock:
            counts = dict(self._counts)
        return CacheStats(**counts, evictions=evictions, store_available=store_available)


class Observed(Protocol):
    """A cache as its instruments see it."""

    @property
    def name(self) -> str: ...

    def stats(self) -> CacheStats: ...


_caches: weakref.WeakSet[Observed] = weakref.WeakSet()
_lock = threading.Lock()
_observed = False
# Errors by the `reason` attribute of loadwarden.sdk.cache.errors.
_ERROR_REASONS = {
    "store": "store_errors",
    "decode": "decode_errors",
    "too_large": "too_large",
    "unserialisable": "unserialisable",
}


def _by_name() -> dict[str, CacheStats]:
    summed: dict[str, CacheStats] = {}
    for cache in list(_caches):
        stats = cache.stats()
        seen = summed.get(cache.name)
        if seen is not None:
            stats = CacheStats(
                **{field: getattr(seen, field) + getattr(stats, field) for field in (*_FIELDS, "evictions")},
                store_available=seen.store_available and stats.store_available,
            )
        summed[cache.name] = stats
    return summed


def _counter(field: str) -> metrics.CallbackT:
    def observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [metrics.Observation(getattr(stats, field), {"cache": name}) for name, stats in _by_name().items()]

    return observe


def _errors(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return [
        metrics.Observation(getattr(stats, field), {"cache": name, "reason": reason})
        for name, stats in _by_name().items()
        for reason, field in _ERROR_REASONS.items()
    ]


def _hit_ratio(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return [metrics.Observation(stats.hit_rate, {"cache": name}) for name, stats in _by_name().items()]


def observe_cache(cache: Observed) -> None:
    """Exposes `cache`'s counts: the counters `loadwarden.sdk.cache.hits`, `.misses`,
    `.computes`, `.evictions`, `.errors` (attribute `reason`: store, decode, too_large,
    unserialisable) and the gauge `loadwarden.sdk.cache.hit_ratio`, each by `cache`."""
    global _observed
    with _lock:
        _caches.add(cache)
        if _observed:
            return
        _observed = True
        for field, unit, description in (
            ("hits", "{hit}", "Cache lookups answered from the store"),
            ("misses", "{miss}", "Cache lookups that found nothing usable"),
            ("computes", "{compute}", "Calls of the cached function (one per key at a time)"),
            ("evictions", "{eviction}", "Entries the in-process store evicted to make room"),
        ):
            _meter.create_observable_counter(
                f"loadwarden.sdk.cache.{field}", callbacks=[_counter(field)], unit=unit, description=description
            )
        _meter.create_observable_counter(
            "loadwarden.sdk.cache.errors",
            callbacks=[_errors],
            unit="{error}",
            description="Cache operations that failed, by reason (store, decode, too_large, unserialisable)",
        )
        _meter.create_observable_gauge(
            "loadwarden.sdk.cache.hit_ratio",
            callbacks=[_hit_ratio],
            unit="1",
            description="Cache hits over lookups since the cache was made",
        )
