"""The cache's counts reach OpenTelemetry (an in-memory reader) and `stats()` alike."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from loadwarden.sdk._cache import metrics as cache_metrics
from loadwarden.sdk.cache import AsyncCache, AsyncMemoryStore, Cache, CacheValueError, MemoryStore


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, NumberDataPoint) and point.attributes is not None
                    found.setdefault(metric.name, []).append((dict(point.attributes), point.value))
    return found


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    monkeypatch.setattr(cache_metrics, "_meter", MeterProvider(metric_readers=[reader]).get_meter("test"))
    monkeypatch.setattr(cache_metrics, "_observed", False)
    monkeypatch.setattr(cache_metrics, "_caches", weakref.WeakSet())
    return reader


async def test_hits_misses_computes_evictions_errors_and_the_hit_ratio_are_observed(
    reader: InMemoryMetricReader,
) -> None:
    cache = Cache(MemoryStore(max_entries=1), key_prefix="ml_results")
    for text in ("a", "a", "a", "b"):
        cache.get_or_compute(text, lambda: 1)
    with pytest.raises(CacheValueError):
        cache.set("c", {1, 2})
    also = AsyncCache(AsyncMemoryStore(), key_prefix="other", name="ml_results")  # one series with the first
    await also.get_or_compute("a", lambda: _one())

    found = points(reader)
    series = {"cache": "ml_results"}
    assert found["loadwarden.sdk.cache.hits"] == [(series, 2)]
    assert found["loadwarden.sdk.cache.misses"] == [(series, 3)]
    assert found["loadwarden.sdk.cache.computes"] == [(series, 3)]
    assert found["loadwarden.sdk.cache.evictions"] == [(series, 1)]
    errors = {attributes["reason"]: value for attributes, value in found["loadwarden.sdk.cache.errors"]}
    assert errors == {"store": 0, "decode": 0, "too_large": 0, "unserialisable": 1}
    assert found["loadwarden.sdk.cache.hit_ratio"] == [(series, 2 / 5)]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (2, 2, 0.5)
    assert str(stats) == "2 hits, 2 misses (50.0% hit rate), 2 computes, 1 evictions"


async def _one() -> int:
    return 1
