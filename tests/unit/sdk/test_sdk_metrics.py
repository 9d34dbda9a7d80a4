"""Breaker state changes are observable: logged, counted and exposed as a gauge."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from loadwarden.sdk import _metrics
from loadwarden.sdk._breaker import BreakerConfig, BreakerRegistry


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def number_point(point: object) -> tuple[dict[str, Any], float]:
    """A counter's or gauge's data point as (attributes, value)."""
    assert isinstance(point, NumberDataPoint) and point.attributes is not None
    return dict(point.attributes), point.value


def test_transitions_are_logged_counted_and_gauged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    monkeypatch.setattr(_metrics, "_meter", meter)
    monkeypatch.setattr(_metrics, "_transitions", meter.create_counter("loadwarden.sdk.breaker.transitions"))
    monkeypatch.setattr(_metrics, "_gauge_created", False)
    monkeypatch.setattr(_metrics, "_registries", __import__("weakref").WeakSet())
    clock = Clock()
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=2, open_wait_s=1.0), clock=clock)
    _metrics.observe_breakers(registry)
    breaker = registry.get("SelectServer", "h:1")
    with caplog.at_level(logging.INFO, logger="loadwarden.sdk"):
        for _ in range(2):
            assert breaker.allow()
            breaker.record_failure()
    assert "SelectServer@h:1: CLOSED -> OPEN" in caplog.text
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        metric.name: [number_point(p) for p in metric.data.data_points]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert points["loadwarden.sdk.breaker.state"] == [({"breaker": "SelectServer@h:1"}, 2)]
    assert points["loadwarden.sdk.breaker.transitions"] == [({"breaker": "SelectServer@h:1", "state": "OPEN"}, 1)]
